"""Real Redis processes for tests: standalone, sentinel and cluster, on free loopback ports.

Every server is private to the test run (its own port, its own temp dir), so no test ever
touches a Redis it did not start. A missing ``redis-server`` binary is an error, not a skip:
CI installs it (see .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed; the Redis tests need it (apt-get install redis-server). "
            "They are never skipped."
        )
    return path


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port; ``with_bus`` also needs port + 10000 free (Redis Cluster's bus)."""
    if not with_bus:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, 29999)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class ServerDiedError(RuntimeError):
    """A server we started exited; waiting longer will not help."""


def wait_until(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except ServerDiedError:
            raise
        except Exception as exc:  # the condition may raise until it holds
            result, last_error = None, exc  # type: ignore[assignment]
        else:
            last_error = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


class RedisServer:
    """One redis-server process we own: start, stop, kill, pause (SIGSTOP), resume."""

    def __init__(
        self, *extra: str, port: int | None = None, persistent: bool = False, bus: bool = False
    ):
        self.port = port or free_port(with_bus=bus)
        self.dir = Path(tempfile.mkdtemp(prefix="canary-redis-"))
        self.extra = list(extra)
        if persistent:
            self.extra += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            self.extra += ["--appendonly", "no"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=2)

    def start(self) -> RedisServer:
        args = [
            redis_binary(),
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning",
            *self.extra,
        ]  # fmt: skip
        self.log = self.dir / "server.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.ping, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServerDiedError(f"redis-server exited:\n{self.log.read_text(errors='replace')}")
        with contextlib.closing(self.client()) as client:
            return bool(client.ping())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(*extra: str, persistent: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(*extra, persistent=persistent).start()
    try:
        yield server
    finally:
        server.cleanup()


class Sentinel:
    """A master plus one sentinel monitoring it as ``mymaster`` (quorum 1)."""

    def __init__(self) -> None:
        self.master = RedisServer().start()
        self.port = free_port()
        self.conf = self.master.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 5000\n"
        )
        self.process = subprocess.Popen(
            [redis_binary(), str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ready, timeout=10, what="sentinel to know its master")

    def _ready(self) -> bool:
        with contextlib.closing(redis.Redis(port=self.port, socket_timeout=2)) as client:
            address = client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
            return address is not None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster/0"

    def cleanup(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.master.cleanup()


class Cluster:
    """Three masters, no replicas, created with ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        self.nodes = []
        for _ in range(3):
            node = RedisServer(bus=True)
            node.extra += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.dir / "nodes.conf"),
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
            self.nodes.append(node.start())
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(
            [redis_binary("redis-cli"), *create],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._ok, timeout=30, what="cluster_state:ok on every node")

    def _ok(self) -> bool:
        for node in self.nodes:
            with contextlib.closing(node.client()) as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
        return True

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class AppServer:
    """A real server process (uvicorn, gunicorn, ...) on a free loopback port.

    ``command`` gets ``{port}`` filled in. Output goes to a log file that is shown when the
    process dies or does not come up.
    """

    def __init__(
        self, command: list[str], env: dict[str, str] | None = None, port: int | None = None
    ):
        self.port = port or free_port()
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = {**os.environ, **(env or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="canary-app-"))
        self.log = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> AppServer:
        root = Path(__file__).resolve().parents[2]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(self._ready, timeout=timeout, what=f"{self.command[:4]} on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServerDiedError(f"server exited:\n{self.log.read_text(errors='replace')}")
        return _port_open("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def uvicorn_command(app: str, *extra: str, factory: bool = False) -> list[str]:
    import sys

    return [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}",
        "--log-level", "warning", "--no-access-log", "--lifespan", "on",
        *(["--factory"] if factory else []), *extra,
    ]  # fmt: skip


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc")


def raw_request(port: int, request: bytes, source: str = "127.0.0.3") -> tuple[bytes, bytes]:
    """Send bytes exactly as given; return (head, body) of the response."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as sock:
        sock.sendall(request)
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        while len(body) < length:
            body += sock.recv(65536)
    return head, body
