"""Redis faults while decisions run: killed, paused (SIGSTOP), restarted.

Every decision must come back within the lookup budget (plus scheduling slack on a shared
machine), unknown memberships must go to stable, rules already in the snapshot keep
working, and normal routing must come back by itself when Redis does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from canary_mw.stores import DEFAULT_LOOKUP_TIMEOUT, store_from_url
from tests.support.engines import Driven, eventually, facts
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BUDGET = 0.05  # the default lookup budget, in seconds
# What a decision may take at most: the budget plus slack for a noisy 2-core machine. The
# point is the order of magnitude: redis-py's defaults stall for 4.9 s (refused) / 58 s (hung).
CEILING = BUDGET + 0.1

RULES = {
    "rules": [
        {"id": "office", "when": {"ip_in_set": "office"}, "target": "canary"},
        {"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "v2"},
    ]
}
OFFICE = facts("10.1.2.3")
VIP = facts("192.0.2.1", cookies="uid=vip1")
OTHER = facts("192.0.2.2", cookies="uid=someone")


@dataclass
class Record:
    latencies: list[float] = field(default_factory=list)
    outcomes: dict[str, set[str]] = field(default_factory=dict)

    def check(self, phase: str) -> None:
        worst = max(self.latencies)
        ordered = sorted(self.latencies)
        print(  # visible with -s; the figures behind the README's fault table
            f"{phase}: {len(ordered)} decisions, p50 {ordered[len(ordered) // 2] * 1000:.3f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.3f} ms, max {worst * 1000:.1f} ms"
        )
        assert worst <= CEILING, (
            f"{phase}: slowest decision {worst * 1000:.1f} ms over {len(self.latencies)} "
            f"(p50 {sorted(self.latencies)[len(self.latencies) // 2] * 1000:.2f} ms)"
        )


async def drive(driven: Driven, seconds: float) -> Record:
    """Decide a mix of requests for ``seconds``, recording every latency and outcome."""
    record = Record()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, request in (("office", OFFICE), ("vip", VIP), ("other", OTHER)):
            start = time.perf_counter()
            decision = await driven.decide(request)
            record.latencies.append(time.perf_counter() - start)
            record.outcomes.setdefault(name, set()).add(decision.target)
        await asyncio.sleep(0.002)
    return record


@pytest.fixture(params=["sync", "async"])
async def routed(request: pytest.FixtureRequest, fresh_redis: RedisServer) -> AsyncIterator[Driven]:
    writer = store_from_url(fresh_redis.url)
    writer.set_rules(RULES)
    writer.add_ips("office", ["10.1.0.0/16"])
    writer.add_members("vip", ["vip1"])
    writer.close()
    # cache_ttl=0: every VIP/other decision needs Redis, the worst case for a fault.
    driven = Driven(
        request.param,
        fresh_redis.url,
        "canary:",
        lookup_timeout=DEFAULT_LOOKUP_TIMEOUT,
        cache_ttl=0,
    )
    assert await driven.start()
    healthy = await drive(driven, 0.3)
    healthy.check("healthy")
    assert healthy.outcomes == {"office": {"canary"}, "vip": {"v2"}, "other": {"stable"}}
    yield driven
    await driven.close()


async def routing_is_back(driven: Driven) -> bool:
    return (await driven.decide(VIP)).target == "v2"


async def test_killed_then_restarted(routed: Driven, fresh_redis: RedisServer) -> None:
    fresh_redis.kill()
    down = await drive(routed, 1.5)
    down.check("killed")
    assert down.outcomes["office"] == {"canary"}  # the snapshot outlives Redis
    assert down.outcomes["vip"] == {"v2", "stable"} or down.outcomes["vip"] == {"stable"}
    assert "stable" in down.outcomes["vip"]  # unknown membership → stable
    assert down.outcomes["other"] == {"stable"}
    assert routed.engine.breaker.is_open

    fresh_redis.start()  # same port, same append-only file: the data comes back
    took = await eventually(lambda: routing_is_back(routed), timeout=5, what="recovery")
    after = await drive(routed, 0.5)
    after.check("after restart")
    assert after.outcomes == {"office": {"canary"}, "vip": {"v2"}, "other": {"stable"}}
    assert not routed.engine.breaker.is_open
    assert took < 5


async def test_paused_then_resumed(routed: Driven, fresh_redis: RedisServer) -> None:
    fresh_redis.pause()  # SIGSTOP: connections hang instead of failing
    try:
        hung = await drive(routed, 2.0)
    finally:
        fresh_redis.resume()
    hung.check("paused")
    assert hung.outcomes["office"] == {"canary"}
    assert "stable" in hung.outcomes["vip"]
    assert hung.outcomes["other"] == {"stable"}
    # Once detected, a hung Redis costs nothing: most decisions took no lookup at all.
    fast = sum(latency < BUDGET / 5 for latency in hung.latencies)
    assert fast / len(hung.latencies) > 0.9, f"{fast} of {len(hung.latencies)} were fast"

    await eventually(lambda: routing_is_back(routed), timeout=5, what="recovery")
    after = await drive(routed, 0.5)
    after.check("after resume")
    assert after.outcomes == {"office": {"canary"}, "vip": {"v2"}, "other": {"stable"}}


async def test_refused_from_the_start(fresh_redis: RedisServer) -> None:
    """A process that starts while Redis is down serves stable at once, then catches up."""
    fresh_redis.stop()
    driven = Driven(
        "async", fresh_redis.url, "canary:", lookup_timeout=DEFAULT_LOOKUP_TIMEOUT, cache_ttl=0
    )
    try:
        assert not await driven.start()  # nothing loaded, and start() did not hang
        cold = await drive(driven, 0.5)
        cold.check("refused")
        assert cold.outcomes == {"office": {"stable"}, "vip": {"stable"}, "other": {"stable"}}
        fresh_redis.start()
        store_from_url(fresh_redis.url).add_ips("ips", ["192.0.2.2"])  # the default rules
        await eventually(lambda: _is_canary(driven), timeout=5, what="routing after Redis appeared")
    finally:
        await driven.close()


async def _is_canary(driven: Driven) -> bool:
    return (await driven.decide(OTHER)).target == "canary"
