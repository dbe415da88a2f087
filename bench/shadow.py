"""The stable path's CPU cost with shadow traffic off, at 10 % and at 100 % (issue 15).

    python bench/shadow.py

Same method as bench/inproc.py (uvicorn's httptools protocol fed from a fake transport, apps
taking turns in short rounds, ratios within one run): the router with no mirror, with a mirror
that samples nothing (0 %: the request-path cost of a mirror being in force), 10 % of requests
at random, and 100 %. Copies go to a real canary process (uvicorn,
bench/apps.py) over loopback; their sending runs on the same event loop, and each round waits
until its copies are answered and compared, so the CPU time per request includes the copies'
own work (build, send, read, compare): "with copies". "until answered" counts only up to the
last stable answer of the round (the tee and whatever copy work ran before it). The queue is large
(10,000) so that copies are sent rather than dropped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import inproc

ROUNDS, PER_ROUND, WARM = 20, 500, 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _router(canary: str | None, percent: float) -> Any:
    from canary_mw import CanaryRouter
    from canary_mw.stores import store_from_url

    store = f"memory://shadow-bench-{percent}-{canary is not None}"
    if canary is not None:
        store_from_url(store).set_mirror({
            "upstream": canary, "percent": percent, "by": "random", "queue": 10_000,
            "concurrency": 8, "compare": {"body": "digest"},
        })  # fmt: skip
    return CanaryRouter(inproc.apps.backend, store=store, canary_url="http://127.0.0.1:9",
                        default_rules=inproc.IP_RULE)  # fmt: skip


async def _drained(app: Any) -> None:
    shadow = getattr(app, "_shadow", None)
    while shadow is not None and shadow.sender.pending:  # noqa: ASYNC110 - polling is the point
        await asyncio.sleep(0.001)


def _start_canary(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.apps:backend", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=Path(__file__).resolve().parent.parent, env={**os.environ},
    )  # fmt: skip


async def main() -> None:
    port = _free_port()
    canary = _start_canary(port)
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the canary did not start")
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        cases = {"mirroring off": _router(None, 0), "mirror set, 0 %": _router(url, 0),
                 "mirroring 10 %": _router(url, 10), "mirroring 100 %": _router(url, 100)}  # fmt: skip
        drivers = {name: await inproc.driver(app) for name, app in cases.items()}
        for serve in drivers.values():
            await serve(WARM)
        samples: dict[str, list[float]] = {name: [] for name in drivers}
        path_only: dict[str, list[float]] = {name: [] for name in drivers}
        for _ in range(ROUNDS):
            for name, serve in drivers.items():
                started = time.process_time()
                path_only[name].append(await serve(PER_ROUND))
                await _drained(cases[name])  # the copies' CPU time is counted with the requests
                samples[name].append((time.process_time() - started) / PER_ROUND * 1e6)
        off, off_path = samples["mirroring off"], path_only["mirroring off"]
        print(f"{'case':<20} {'with copies µs/req':>18} {'x off':>6} "
              f"{'until answered µs/req':>21} {'x off':>6}")  # fmt: skip
        for name, values in samples.items():
            ratio = statistics.median(v / o for v, o in zip(values, off, strict=True))
            path = path_only[name]
            path_ratio = statistics.median(v / o for v, o in zip(path, off_path, strict=True))
            print(f"{name:<20} {statistics.median(values):>18.1f} {ratio:>6.2f} "
                  f"{statistics.median(path):>21.1f} {path_ratio:>6.2f}")  # fmt: skip
        for name, app in cases.items():
            shadow = getattr(app, "_shadow", None)
            if shadow is not None:
                totals: dict[str, int] = {}
                for (_, counter), n in shadow.report.totals.items():
                    totals[counter] = totals.get(counter, 0) + n
                print(f"{name}: copies {totals}")
    finally:
        canary.terminate()
        canary.wait(10)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
