"""Per-request CPU cost of the stable path inside uvicorn's HTTP protocol, without the noise.

    python bench/inproc.py                # every case, about a minute
    python bench/inproc.py bare router    # some of them (names below)

No sockets and no load generator: each app is served by uvicorn's httptools protocol fed
from a fake transport in this process, so only the server's and the app's Python code is
measured. Apps take turns in short rounds, so whatever else the machine does hits them
alike; each ratio is the median over rounds of (bare app's µs / this app's µs).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bench import apps

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n"
    b"Cookie: uid=u7; beta=0; session=4f1c2a9e\r\n\r\n"
)
IP_RULE = [{"id": "office", "when": {"ip": ["10.0.0.0/8"]}}]
ROUNDS, PER_ROUND, WARM = 30, 1000, 3000


class FakeTransport:
    """Enough of an asyncio transport for uvicorn: counts the writes, keeps nothing."""

    def __init__(self) -> None:
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def router(rules: Any = IP_RULE, **options: Any) -> Any:
    from canary_mw import CanaryRouter
    from canary_mw.stores import store_from_url

    store = f"memory://inproc{id(options)}"
    writer = store_from_url(store)
    writer.add_members("vip", ["u1", "u2"])
    return CanaryRouter(
        apps.backend, store=store, canary_url="http://127.0.0.1:9", default_rules=rules, **options
    )


CASES: dict[str, Callable[[], Any]] = {
    "bare": lambda: apps.backend,
    "pure no-op middleware": apps.pure_noop,
    "pure middleware adding one header": apps.pure_tag,
    "router, IP-list rule": router,
    "router, IP-list rule, tag off": lambda: router(tag_header=None),
    "router, IP-list rule, tag and metrics off": lambda: router(
        tag_header=None, metrics=False, rollouts=False
    ),
    "router, cookie rule": lambda: router([{"id": "b", "when": {"cookie": "beta", "equals": "1"}}]),
    "router, Redis-set rule (cached)": lambda: router(
        [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}}],
        engine_options={"cache_ttl": 600},
    ),
    "router, sticky 5 %": lambda: router(
        [{"id": "pct", "when": {"percent": 5, "by": "cookie:uid", "salt": "bench"}}]
    ),
}


async def driver(app: Any) -> Callable[[int], Awaitable[float]]:
    """A function serving n requests to ``app``; returns CPU µs per request."""
    if hasattr(app, "start"):
        await app.start()
    config = Config(app, http="httptools", lifespan="off", access_log=False, log_level="warning")
    config.load()
    protocol = HttpToolsProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]

    async def serve(n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            before = transport.writes
            protocol.data_received(REQUEST)
            # Yield to the loop until uvicorn has written the head and the body.
            while transport.writes < before + 2:  # noqa: ASYNC110 - polling is the point
                await asyncio.sleep(0)
        return (time.process_time() - started) / n * 1e6

    return serve


async def main(names: list[str]) -> None:
    chosen = {
        name: make for name, make in CASES.items() if not names or any(n in name for n in names)
    }
    chosen = {"bare": CASES["bare"], **chosen}
    drivers = {name: await driver(make()) for name, make in chosen.items()}
    for serve in drivers.values():
        await serve(WARM)
    samples: dict[str, list[float]] = {name: [] for name in drivers}
    for _ in range(ROUNDS):
        for name, serve in drivers.items():
            samples[name].append(await serve(PER_ROUND))
    bare = samples["bare"]
    print(f"{'case':<45} {'CPU µs/req':>10} {'+ vs bare':>10} {'x bare':>7}")
    for name, values in samples.items():
        median = statistics.median(values)
        ratio = statistics.median(b / v for b, v in zip(bare, values, strict=True))
        extra = median - statistics.median(bare)
        print(f"{name:<45} {median:>10.1f} {extra:>+10.1f} {ratio:>7.2f}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1:]))
