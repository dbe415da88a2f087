"""CPU cost of one forwarded (canary) request inside the router's process, without a load
generator: each router is called directly in a loop, forwarding to a real canary (the
benchmark's trivial backend under uvicorn, in its own process).

    python bench/forward_cost.py            # both sides, about half a minute
    python bench/forward_cost.py --profile  # and a cProfile of each canary path
    python bench/forward_cost.py --opcodes  # Python bytecodes per WSGI request, counted

The two last WSGI rows (an app that does nothing, and CanaryWSGI's stable path around it)
give what routing alone costs: the decision, the metrics, the wrapper.

What it prints is this process's CPU time per request (the canary's own is not counted),
in rounds that alternate the cases, so whatever else the machine does hits them alike:
the median over rounds, and each case's ratio to the bare Flask app's (WSGI) cost.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, free_port

ROUNDS, PER_ROUND, WARM = 15, 400, 500


def _canary() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.apps:backend", "--port", str(port),
         "--log-level", "warning", "--http", "httptools", "--loop", "uvloop"],
        cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the canary did not start")


# -- WSGI ------------------------------------------------------------------------------------
def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "wrk", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "RAW_URI": "/", "SCRIPT_NAME": "",  # as gunicorn's environ has them
    }  # fmt: skip


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


def _wsgi_loop(app: Any) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            body = app(_environ(), _start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return run


def wsgi_cases(canary_url: str) -> dict[str, Callable[[int], None]]:
    from flask import Flask

    from canary_mw import CanaryWSGI, store_from_url

    flask = Flask(__name__)
    flask.add_url_rule("/", "index", lambda: "This is version 1\n")
    store = store_from_url("memory://")
    store.set_mode("all")
    router = CanaryWSGI(flask.wsgi_app, store=store, canary_url=canary_url)
    os.environ["BENCH_CANARY_URL"] = canary_url
    from bench.apps import wsgi_floor

    # Routing alone: CanaryWSGI's stable path around an app that does nothing, with the
    # same options as the canary path's router (the forward is what the two differ by).
    stable_store = store_from_url("memory://")
    stable_store.set_mode("off")
    stable_router = CanaryWSGI(_nothing, store=stable_store, canary_url=canary_url)
    return {
        "bare Flask app": _wsgi_loop(flask),
        "CanaryWSGI canary path": _wsgi_loop(router),
        # The yardstick: the cheapest forward a WSGI app can make (no checks at all).
        "WSGI floor (bench/apps.py)": _wsgi_loop(wsgi_floor()),
        "a WSGI app that does nothing": _wsgi_loop(_nothing),
        "CanaryWSGI stable path, around it": _wsgi_loop(stable_router),
    }


def _nothing(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"nothing\n"]


# -- ASGI ------------------------------------------------------------------------------------
def _scope() -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


def asgi_cases(
    canary_url: str, loop: asyncio.AbstractEventLoop
) -> dict[str, Callable[[int], None]]:
    import httpx

    from bench.apps import backend
    from canary_mw import CanaryRouter, async_store_from_url

    async def receive() -> Any:  # a client that neither sends nor leaves
        await asyncio.get_running_loop().create_future()

    async def send(message: Any) -> None:
        pass

    def make(**options: Any) -> Callable[[int], None]:
        store = async_store_from_url("memory://")
        loop.run_until_complete(store.set_mode("all"))
        router = CanaryRouter(backend, store=store, canary_url=canary_url, **options)

        async def many(count: int) -> None:
            for _ in range(count):
                await router(_scope(), receive, send)

        return lambda count: loop.run_until_complete(many(count))

    return {
        "CanaryRouter canary path": make(),
        "CanaryRouter canary path, httpx's transport": make(transport=httpx.AsyncHTTPTransport()),
    }


def measure(cases: dict[str, Callable[[int], None]]) -> dict[str, float]:
    """Median CPU µs per request of each case, over rounds that alternate them."""
    for run in cases.values():
        run(WARM)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, run in cases.items():
            started = time.process_time()
            run(PER_ROUND)
            samples[name].append((time.process_time() - started) / PER_ROUND * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def profile(name: str, run: Callable[[int], None]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run(3000)
    profiler.disable()
    print(f"\n-- {name}: cProfile, by own time")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def opcodes(name: str, run: Callable[[int], None], top: int = 12) -> None:
    """Count the bytecodes one request executes (sys.settrace with opcode events): the same
    figure on every run of the same code, where CPU time on a shared machine moves by tens
    of percent. What C does (system calls, httptools, hashing) is not counted."""
    per_function: Counter[str] = Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            per_function["/".join(code.co_filename.split("/")[-2:]) + ":" + code.co_name] += 1
        return tracer

    requests = 100
    sys.settrace(tracer)
    try:
        run(requests)
    finally:
        sys.settrace(None)
    total = sum(per_function.values()) / requests
    print(f"\n-- {name}: {total:.0f} bytecodes per request, the most in")
    for function, count in per_function.most_common(top):
        print(f"{count / requests:7.0f}  {function}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--opcodes", action="store_true")
    args = parser.parse_args()
    import uvloop

    process, canary_url = _canary()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        cases = {**wsgi_cases(canary_url), **asgi_cases(canary_url, loop)}
        results = measure(cases)
        bare = results["bare Flask app"]
        for name, cost in results.items():
            print(f"{name:<46} {cost:7.1f} µs CPU/request  ({cost / bare:.2f}x bare Flask)")
        if args.opcodes:
            for name, run in cases.items():
                if "Router" not in name and "nothing" not in name:  # (WSGI; no event loop)
                    opcodes(name, run)
        if args.profile:
            for name, run in cases.items():
                if "canary" in name:
                    profile(name, run)
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
