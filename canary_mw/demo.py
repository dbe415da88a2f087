"""``canary-mw demo``: the classic two-version demo in one command.

Starts the canary ("This is version 2") and the stable app ("This is version 1", wrapped in
CanaryWSGI) as two small Flask apps, with Redis from ``CANARY_MW_STORE`` (or ``REDIS_URL``),
else a private
``redis-server`` when one is installed, else the in-process memory store. Prints the commands
that move a client to the canary and back; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from .errors import ConfigurationError
from .stores import Store, store_from_url
from .wsgi import CanaryWSGI

__all__ = ["run_demo"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    # Linux: the private redis-server gets SIGTERM if the demo is killed outright, so even a
    # `kill -9` of the demo leaves no orphan behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Redis:
    url: str
    cli: str  # how to call redis-cli against it, for the printed commands
    process: subprocess.Popen[bytes] | None = None
    directory: str | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


#: Where the demo looks for a store URL: canary_mw's one name for it (the CLI and the examples
#: read it too), then REDIS_URL, which the demo read first and many setups already export.
STORE_VARIABLES = ("CANARY_MW_STORE", "REDIS_URL")


def _start_redis(out: TextIO) -> _Redis | None:
    for variable in STORE_VARIABLES:
        url = os.environ.get(variable)
        if url and not url.startswith("memory://"):
            print(f"Using Redis from {variable}: {url}", file=out)
            return _Redis(url, f"redis-cli -u {url}")
        if url:
            return None  # memory:// asked for: the in-process store
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port, directory = _free_port(), tempfile.mkdtemp(prefix="canary-mw-demo-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    redis = _Redis(f"redis://127.0.0.1:{port}/0", f"redis-cli -p {port}", process, directory)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            redis.stop()
            raise ConfigurationError("the private redis-server did not start")
        time.sleep(0.05)
    print(f"Started a private redis-server on 127.0.0.1:{port} (deleted on exit)", file=out)
    return redis


def _version_app(message: str) -> Any:
    from flask import Flask  # noqa: PLC0415 - the optional 'demo' extra

    app = Flask(f"demo-{message}")

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def get_message(path: str) -> str:
        return message + "\n"

    return app


def _other(port: int) -> int:
    """A port to suggest instead of a busy one."""
    return port + 100 if port < 65_000 else 8100


class _PortInUseError(Exception):
    def __init__(self, address: str):
        super().__init__(address)
        self.address = address


@contextlib.contextmanager
def _serving(app: Any, host: str, port: int) -> Iterator[None]:
    from werkzeug.serving import make_server  # noqa: PLC0415 - comes with Flask

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log between the lines
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise _PortInUseError(f"{host}:{port}") from None
    except SystemExit:
        # Werkzeug reports a port in use by printing its own advice and exiting.
        raise _PortInUseError(f"{host}:{port}") from None
    thread = threading.Thread(target=server.serve_forever, name=f"demo-{port}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(5)


_HELP = """\
Commands you can type here: ip add|remove ADDRESS, user add|remove NAME, mode off|rules|all,
status, quit."""


def _command_loop(store: Store, stdin: TextIO, out: TextIO, stop: threading.Event) -> None:
    """Read commands from the terminal (the only way to change a memory store from outside)."""
    for line in stdin:
        words = line.split()
        try:
            if not words:
                continue
            if words in (["quit"], ["exit"]):
                stop.set()
                return
            if words == ["status"]:
                mode = store.get_config().mode or "rules"
                ips, users = sorted(store.members("ips")), sorted(store.members("users"))
                print(f"mode={mode} ips={ips} users={users}", file=out)
            elif len(words) == 3 and words[0] in ("ip", "user") and words[1] in ("add", "remove"):
                kind, action, value = words
                if kind == "ip":
                    ip_change = store.add_ips if action == "add" else store.remove_ips
                    changed = ip_change("ips", [value]).count
                else:
                    user_change = store.add_members if action == "add" else store.remove_members
                    changed = user_change("users", [value]).count
                print(f"{kind} {action}: {changed} changed", file=out)
            elif len(words) == 2 and words[0] == "mode":
                print(f"mode {words[1]} (version {store.set_mode(words[1]).version})", file=out)
            else:
                print(_HELP, file=out)
        except ConfigurationError as exc:
            print(f"error: {exc}", file=out)
        out.flush()


def _instructions(url: str, canary_port: int, host: str, redis: _Redis | None) -> str:
    lines = [
        "",
        "canary_mw demo",
        f"  stable (This is version 1) behind CanaryWSGI:  {url}",
        f"  canary (This is version 2):                     http://{host}:{canary_port}/",
        "",
        "Try it:",
        f"  curl {url}                          # This is version 1",
    ]
    if redis is not None:
        cli = redis.cli
        lines += [
            f"  {cli} SADD canary:set:ips 127.0.0.1     # your IP to the canary",
            f"  curl {url}                          # This is version 2",
            f"  {cli} SREM canary:set:ips 127.0.0.1     # and back",
            f"  curl --cookie canary_user=alice {url}   # a VIP user, by cookie, after:",
            f"  {cli} SADD canary:set:users alice",
            f"  {cli} HSET canary:config mode off       # the kill switch",
            "  or with canary-mw (validated, recorded in canary-mw history), e.g.",
            f"  CANARY_MW_STORE={redis.url} canary-mw ip add 127.0.0.1",
        ]
    lines += [
        "  or type here: ip add 127.0.0.1 | ip remove 127.0.0.1 | user add alice | mode off",
        "",
        "Ctrl-C stops the demo and everything it started.",
    ]
    return "\n".join(lines)


def run_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    canary_port: int = 8001,
    out: TextIO = sys.stdout,
    stdin: TextIO = sys.stdin,
) -> int:
    redis = _start_redis(out)
    store_url = redis.url if redis else "memory://canary-mw-demo"
    if redis is None:
        asked = any(os.environ.get(name, "").startswith("memory://") for name in STORE_VARIABLES)
        reason = "memory:// asked for" if asked else (
            "No CANARY_MW_STORE / REDIS_URL and no redis-server installed"
        )  # fmt: skip
        print(
            f"{reason}: using the in-process memory store (one process only; type commands "
            "below instead of redis-cli).",
            file=out,
        )
    store = store_from_url(store_url)
    stable = _version_app("This is version 1")
    router = CanaryWSGI(stable.wsgi_app, store=store, canary_url=f"http://{host}:{canary_port}")
    stable.wsgi_app = router
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    code = 0
    try:
        with (
            _serving(_version_app("This is version 2"), host, canary_port),
            _serving(stable, host, port),
        ):
            print(_instructions(f"http://{host}:{port}/", canary_port, host, redis), file=out)
            out.flush()
            threading.Thread(
                target=_command_loop, args=(store, stdin, out, stop), daemon=True
            ).start()
            while not stop.wait(0.5):  # a timed wait, so signal handlers get to run
                pass
    except _PortInUseError as exc:
        # Werkzeug's own message suggests its own options, not ours.
        print(
            f"error: {exc.address} is already in use (another demo, or another server); "
            f"pick free ports: canary-mw demo --port {_other(port)} --canary-port "
            f"{_other(canary_port)}",
            file=out,
        )
        code = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        router.close()
        if redis:
            redis.stop()
        print("demo stopped", file=out)
        out.flush()
    return code
