"""Engines against real stores: propagation, garbage, caching, and Redis off the hot path."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_mw.stores import DEFAULT_LOOKUP_TIMEOUT, store_from_url
from tests.support.contract import raw
from tests.support.engines import Driven, eventually, facts, redis_cli
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

_names = itertools.count()
VIP_RULES = {
    "rules": [
        {"id": "office", "when": {"ip_in_set": "office"}, "target": "canary"},
        {"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "v2"},
    ]
}


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def on_redis(
    flavour: str, redis_srv: RedisServer, prefix: str
) -> AsyncIterator[tuple[Driven, Any]]:
    writer = store_from_url(redis_srv.url, prefix=prefix)
    writer.set_rules(VIP_RULES)
    driven = Driven(flavour, redis_srv.url, prefix)
    assert await driven.start()
    yield driven, writer
    await driven.close()
    writer.close()


async def test_redis_cli_ip_change_reaches_a_running_engine_within_1s(
    on_redis: tuple[Driven, Any], redis_srv: RedisServer, prefix: str
) -> None:
    driven, _ = on_redis
    client = facts("203.0.113.7")
    assert (await driven.decide(client)).target == "stable"

    redis_cli(redis_srv.port, "SADD", f"{prefix}set:office", "203.0.113.0/24")
    took = await eventually(
        lambda: _target_is(driven, client, "canary"), timeout=1.0, what="SADD office"
    )
    redis_cli(redis_srv.port, "SREM", f"{prefix}set:office", "203.0.113.0/24")
    took_back = await eventually(
        lambda: _target_is(driven, client, "stable"), timeout=1.0, what="SREM office"
    )
    assert took < 1.0
    assert took_back < 1.0


async def test_redis_cli_user_change_beats_the_cached_negative_answer(
    on_redis: tuple[Driven, Any], redis_srv: RedisServer, prefix: str
) -> None:
    driven, _ = on_redis
    vip = facts(cookies="uid=4242")
    assert (await driven.decide(vip)).target == "stable"  # "not a member" is now cached
    redis_cli(redis_srv.port, "SADD", f"{prefix}set:vip", "4242")
    await eventually(lambda: _target_is(driven, vip, "v2"), timeout=1.0, what="SADD vip")
    redis_cli(redis_srv.port, "SREM", f"{prefix}set:vip", "4242")
    await eventually(lambda: _target_is(driven, vip, "stable"), timeout=1.0, what="SREM vip")


async def test_stale_answers_are_served_while_read_again_in_the_background(
    flavour: str, redis_srv: RedisServer, prefix: str
) -> None:
    """Past its TTL an answer is still used (no request waits on Redis for a key it has
    seen recently) and replaced by a background read, within ttl + stale."""
    writer = store_from_url(redis_srv.url, prefix=prefix)
    writer.set_rules(VIP_RULES)
    writer.add_members("vip", ["7"])
    driven = Driven(flavour, redis_srv.url, prefix, cache_ttl=0.05, cache_stale=30)
    vip = facts(cookies="uid=7")
    try:
        assert await driven.start()
        # Subscribing empties the cache (it may have missed changes): let that happen first.
        await eventually(
            lambda: _async_true(driven.engine.notices > 0), timeout=5, what="subscribed"
        )
        assert (await driven.decide(vip)).target == "v2"  # looked up, cached
        expired = asyncio.get_running_loop().time() + 0.06
        await eventually(
            lambda: _async_true(asyncio.get_running_loop().time() > expired),
            timeout=1, what="the TTL",
        )  # fmt: skip
        raw(redis_srv.url, "SREM", f"{prefix}set:vip", "7")  # no notification: redis-cli's way
        # Still v2: a request-time lookup would have said stable, so this came from the cache.
        assert (await driven.decide(vip)).target == "v2"
        await eventually(
            lambda: _target_is(driven, vip, "stable"), timeout=1, what="background re-read"
        )
    finally:
        await driven.close()
        writer.close()


async def _async_true(value: bool) -> bool:
    return value


async def test_redis_cli_kill_switch_within_1s(
    on_redis: tuple[Driven, Any], redis_srv: RedisServer, prefix: str
) -> None:
    driven, writer = on_redis
    writer.add_ips("office", ["198.51.100.1"])
    client = facts()
    await eventually(lambda: _target_is(driven, client, "canary"), timeout=1.0, what="office")
    redis_cli(redis_srv.port, "HSET", f"{prefix}config", "mode", "off")
    await eventually(lambda: _target_is(driven, client, "stable"), timeout=1.0, what="mode off")
    decision = await driven.decide(client)
    assert decision.reason == "mode-off"


async def test_notifications_invalidate_long_cached_answers(
    flavour: str, redis_srv: RedisServer, prefix: str
) -> None:
    """With a 60 s cache only the pub/sub notification can explain a change within 1 s."""
    writer = store_from_url(redis_srv.url, prefix=prefix)
    writer.set_rules(VIP_RULES)
    driven = Driven(flavour, redis_srv.url, prefix, cache_ttl=60, poll_interval=30)
    try:
        assert await driven.start()
        vip = facts(cookies="uid=7")
        assert (await driven.decide(vip)).target == "stable"
        writer.add_members("vip", ["7"])
        await eventually(lambda: _target_is(driven, vip, "v2"), timeout=1.0, what="add vip")
        writer.remove_members("vip", ["7"])
        await eventually(lambda: _target_is(driven, vip, "stable"), timeout=1.0, what="rm vip")
        writer.set_mode("all")
        await eventually(lambda: _target_is(driven, vip, "canary"), timeout=1.0, what="all")
    finally:
        await driven.close()
        writer.close()


@pytest.mark.parametrize("backend", ["memory", "sentinel", "cluster"])
async def test_second_client_changes_propagate_on_every_backend(
    flavour: str, backend: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    if backend == "memory":
        url = f"memory://engine-{next(_names)}"
    else:
        url = request.getfixturevalue(backend).url
    writer = store_from_url(url, prefix=prefix)
    driven = Driven(flavour, url, prefix, poll_interval=30)  # only pub/sub can be this fast
    try:
        assert await driven.start()
        client = facts("192.0.2.44", cookies="canary_user=u1")
        assert (await driven.decide(client)).reason == "no-match"  # the default rules
        writer.add_members("users", ["u1"])
        await eventually(lambda: _target_is(driven, client, "canary"), timeout=1.0, what="user")
        writer.remove_members("users", ["u1"])
        writer.add_ips("ips", ["192.0.2.44"])
        await eventually(lambda: _reason_is(driven, client, "rule", "ips"), timeout=1.0, what="ip")
        writer.set_rules({"rules": [{"id": "x", "when": {"method": "GET"}, "target": "v9"}]})
        await eventually(lambda: _target_is(driven, client, "v9"), timeout=1.0, what="rules")
    finally:
        await driven.close()
        writer.close()


async def _target_is(driven: Driven, request: Any, target: str) -> bool:
    return (await driven.decide(request)).target == target


async def _reason_is(driven: Driven, request: Any, reason: str, rule_id: str) -> bool:
    decision = await driven.decide(request)
    return decision.reason == reason and decision.rule_id == rule_id


GARBAGE = [
    ("rules not JSON", "HSET", "config", "rules", "{oops", "invalid rules"),
    ("rules wrong shape", "HSET", "config", "rules", '{"rules": {"id": 1}}', "invalid rules"),
    (
        "rule invalid",
        "HSET",
        "config",
        "rules",
        '[{"id": "x", "when": {"ip": ["x"]}}]',
        "invalid rules",
    ),
    ("mode unknown", "HSET", "config", "mode", "sometimes", "invalid mode"),
    ("config not a hash", "SET", "config", None, "garbage", "invalid config"),
    ("ip set not a set", "SET", "set:office", None, "garbage", "invalid IP set 'office'"),
    ("vip set not a set", "SET", "set:vip", None, "garbage", None),
]


@pytest.mark.parametrize(
    ("command", "key", "field", "value", "logged"),
    [case[1:] for case in GARBAGE],
    ids=[case[0] for case in GARBAGE],
)
async def test_garbage_keeps_the_last_good_rules(
    flavour: str,
    redis_srv: RedisServer,
    prefix: str,
    store_logs: pytest.LogCaptureFixture,
    command: str,
    key: str,
    field: str | None,
    value: str,
    logged: str | None,
) -> None:
    writer = store_from_url(redis_srv.url, prefix=prefix)
    writer.set_rules(VIP_RULES)
    writer.add_ips("office", ["198.51.100.0/24"])
    driven = Driven(flavour, redis_srv.url, prefix, poll_interval=0.05)
    try:
        assert await driven.start()
        office = facts("198.51.100.1")
        assert (await driven.decide(office)).rule_id == "office"

        # SET replaces a key of any type in one command, as a careless operator would.
        raw(redis_srv.url, command, f"{prefix}{key}", *([field] if field else []), value)
        await refreshed_twice(driven)
        for _ in range(20):  # many requests, each still routed by the last good rules
            decision = await driven.decide(office)
            assert (decision.target, decision.rule_id) == ("canary", "office")
        vip = await driven.decide(facts("192.0.2.1", cookies="uid=1"))
        assert vip.target == "stable"  # a broken vip set is "unknown", never canary
        if logged:
            errors = [r.getMessage() for r in store_logs.records if r.levelno >= logging.ERROR]
            assert any(logged in message for message in errors), errors
            assert sum(logged in message for message in errors) == 1  # logged once, not per poll
    finally:
        await driven.close()
        writer.close()


async def refreshed_twice(driven: Driven) -> None:
    """Wait until two whole refreshes ran after now: the store's new content was read."""
    target = driven.engine.refreshes + 2

    async def done() -> bool:
        return driven.engine.refreshes >= target

    await eventually(done, timeout=2.0, what="two refreshes")


async def test_recovers_when_garbage_is_fixed(
    flavour: str, redis_srv: RedisServer, prefix: str, store_logs: pytest.LogCaptureFixture
) -> None:
    writer = store_from_url(redis_srv.url, prefix=prefix)
    driven = Driven(flavour, redis_srv.url, prefix, poll_interval=0.05)
    try:
        assert await driven.start()
        raw(redis_srv.url, "HSET", f"{prefix}config", "rules", "{broken")
        await refreshed_twice(driven)
        client = facts("192.0.2.9")
        assert (await driven.decide(client)).reason == "no-match"
        writer.set_rules({"rules": [{"id": "all", "when": {"method": "GET"}}]})
        await eventually(lambda: _target_is(driven, client, "canary"), timeout=1.0, what="fix")
        messages = [record.getMessage() for record in store_logs.records]
        assert any("valid again" in message for message in messages), messages
    finally:
        await driven.close()
        writer.close()


async def test_bad_members_are_skipped_not_fatal(
    flavour: str, redis_srv: RedisServer, prefix: str, store_logs: pytest.LogCaptureFixture
) -> None:
    raw(redis_srv.url, "SADD", f"{prefix}set:ips", "10.0.0.0/8", "not-an-ip", "2001:db8::/32")
    raw(redis_srv.url, "SET", f"{prefix}ip_lists", json.dumps(["192.0.2.1", "nope", 5]))
    driven = Driven(flavour, redis_srv.url, prefix)
    try:
        assert await driven.start()
        assert (await driven.decide(facts("10.2.3.4"))).target == "canary"
        assert (await driven.decide(facts("2001:db8::9"))).target == "canary"
        assert any("not-an-ip" in record.getMessage() for record in store_logs.records)
    finally:
        await driven.close()


async def test_membership_cache_is_bounded(
    flavour: str, redis_srv: RedisServer, prefix: str
) -> None:
    driven = Driven(flavour, redis_srv.url, prefix, cache_size=500, cache_ttl=60)
    try:
        assert await driven.start()
        for user in range(3000):
            await driven.decide(facts(cookies=f"canary_user=u{user}"))
        assert len(driven.engine.cache) <= 500
    finally:
        await driven.close()


async def test_no_redis_command_per_request_once_warm(flavour: str, prefix: str) -> None:
    """Structural, not timed: 2,000 stable requests by 10 users cost at most a handful of
    Redis commands per refresh tick, however many requests there are."""
    from tests.support.servers import redis_server

    with redis_server() as server:
        writer = store_from_url(server.url, prefix=prefix)
        writer.set_rules(VIP_RULES)
        writer.add_ips("office", ["10.0.0.0/8"])
        driven = Driven(flavour, server.url, prefix, cache_ttl=60, poll_interval=60)
        try:
            assert await driven.start()
            users = [facts("192.0.2.1", cookies=f"uid={n}") for n in range(10)]
            for request in users:  # warm the cache: 10 lookups (again if one missed its budget)
                await eventually(
                    lambda r=request: _answered(driven, r), timeout=5, what="a cached answer"
                )
            admin = server.client()
            admin.config_resetstat()
            for _ in range(200):
                for request in users:
                    assert (await driven.decide(request)).target == "stable"
            stats = admin.info("commandstats")
            lookups = stats.get("cmdstat_sismember", {}).get("calls", 0)
            reads = stats.get("cmdstat_hgetall", {}).get("calls", 0)
            # Zero, or one per user if the cache was cleared once meanwhile (the first pub/sub
            # subscription triggers a full re-read): never one per request.
            assert lookups <= len(users)
            assert reads <= 2  # at most a refresh tick during the loop, not one per request
        finally:
            await driven.close()
            writer.close()


async def _answered(driven: Driven, request: Any) -> bool:
    return not (await driven.decide(request)).pending


def _decide_in_child(engine: Any, connection: Any) -> None:
    decision = engine.decide(facts("203.0.113.50"))
    connection.send((decision.target, engine.snapshot.loaded, len(engine._threads)))
    connection.close()


def test_engine_created_before_fork_works_in_the_child(redis_srv: RedisServer, prefix: str) -> None:
    """gunicorn --preload: the engine is built (and even used) in the parent, then forked."""
    import multiprocessing

    from canary_mw.engine import Engine

    writer = store_from_url(redis_srv.url, prefix=prefix)
    engine = Engine(store_from_url(redis_srv.url, prefix=prefix))
    try:
        assert engine.start(wait=5)
        assert engine.decide(facts("203.0.113.50")).target == "stable"
        writer.add_ips("ips", ["203.0.113.50"])  # changed after the fork point below
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        child = context.Process(target=_decide_in_child, args=(engine, child_end))
        child.start()
        assert parent_end.poll(10), "the child did not answer"
        target, loaded, threads = parent_end.recv()
        child.join(10)
        assert child.exitcode == 0
        assert loaded
        assert threads == 3  # the child started its own poll, listen and revalidate threads
        assert target == "canary"
    finally:
        engine.close()
        engine.store.close()
        writer.close()


def test_async_engine_follows_a_new_event_loop(redis_srv: RedisServer, prefix: str) -> None:
    """Clients are bound to the loop that created them; a second loop gets its own."""
    import asyncio

    from canary_mw.engine import AsyncEngine
    from canary_mw.stores import async_store_from_url

    store_from_url(redis_srv.url, prefix=prefix).add_members("users", ["u9"])
    # Each new loop opens a new connection; under CI load that first round trip can miss the
    # default 50 ms lookup budget (CI saw "stable" once). The test is about the loop.
    store = async_store_from_url(redis_srv.url, prefix=prefix, lookup_timeout=5)
    engine = AsyncEngine(store, cache_ttl=0)
    request = facts(cookies="canary_user=u9")

    async def use() -> str:
        target = (await engine.decide(request)).target
        await engine.aclose()
        return target

    assert asyncio.run(use()) == "canary"
    assert asyncio.run(use()) == "canary"  # a new loop: no "attached to a different loop"


async def test_openresty_data_routes_through_the_option(
    flavour: str, redis_srv: RedisServer, prefix: str
) -> None:
    """An existing OpenResty Redis, untouched: key = IP in db 0, a JSON list in db 2."""
    from canary_mw import openresty_rules

    listed = "198.51.100.61"
    raw(redis_srv.url, "SET", f"{prefix}ip_lists", json.dumps([listed, "10.9.0.0/16"]), db=2)
    rules = openresty_rules(ip_keys=3, ip_list=f"{prefix}ip_lists", ip_list_db=2)
    driven = Driven(flavour, redis_srv.url, prefix, default_rules=rules)
    try:
        assert await driven.start()
        assert (await driven.decide(facts(listed))).rule_id == "openresty-ip-list"
        assert (await driven.decide(facts("10.9.1.1"))).target == "canary"
        client = "198.51.100.62"
        assert (await driven.decide(facts(client))).target == "stable"
        raw(redis_srv.url, "SET", client, client, db=3)  # the classic one-command switch
        await eventually(
            lambda: _reason_is(driven, facts(client), "rule", "openresty-ip-keys"),
            timeout=1.0,
            what="SET ip ip",
        )
        raw(redis_srv.url, "DEL", client, db=3)
    finally:
        await driven.close()
        raw(redis_srv.url, "DEL", f"{prefix}ip_lists", db=2)


async def test_concurrent_misses_for_one_key_share_one_lookup(fresh_redis: RedisServer) -> None:
    """Fifty requests for one uncached user at once cost Redis one SISMEMBER, not fifty:
    Redis load follows distinct keys per cache TTL, not the request rate."""
    writer = store_from_url(fresh_redis.url)
    rule = {"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "canary"}
    writer.set_rules({"rules": [rule]})
    writer.add_members("vip", ["vip1"])
    writer.close()
    driven = Driven("async", fresh_redis.url, "canary:")
    try:
        assert await driven.start()
        client = fresh_redis.client()
        client.config_resetstat()
        decisions = await asyncio.gather(
            *(driven.decide(facts(cookies="uid=vip1")) for _ in range(50))
        )
        calls = client.info("commandstats").get("cmdstat_sismember", {}).get("calls", 0)
        client.close()
        assert {d.target for d in decisions} == {"canary"}
        assert calls == 1
    finally:
        await driven.close()


async def test_a_slow_answer_is_not_a_failure_and_still_lands(fresh_redis: RedisServer) -> None:
    """A request stops waiting after its budget (the router may simply be busy), but the
    lookup goes on: its answer fills the cache, and it does not count against Redis."""
    writer = store_from_url(fresh_redis.url)
    writer.set_rules(VIP_RULES)
    writer.add_members("vip", ["slow"])
    writer.close()
    budget = DEFAULT_LOOKUP_TIMEOUT  # the production budget, which a paused Redis overruns
    driven = Driven("async", fresh_redis.url, "canary:", lookup_timeout=budget, cache_ttl=30)
    engine = driven.engine
    vip = facts(cookies="uid=slow")
    try:
        assert await driven.start()
        # Subscribing empties the cache: let that happen before the answer we look for lands.
        await eventually(lambda: _async_true(engine.notices > 0), timeout=5, what="subscribed")
        fresh_redis.pause()  # answers now take longer than the 50 ms budget...
        try:
            for _ in range(2):  # ...for requests in a row (each one counted as a failure before)
                decision = await driven.decide(vip)
                assert (decision.target, decision.reason) == ("stable", "unknown")
        finally:
            fresh_redis.resume()  # ...but well within the store's 1 s timeout
        await eventually(
            lambda: _async_true(engine.cache.get(decision.pending[0]) is True),
            timeout=2, what="the late answer in the cache",
        )  # fmt: skip
        assert not engine.breaker.is_open
        assert engine.lookup_failures == 0
        assert (await driven.decide(vip)).target == "v2"
    finally:
        await driven.close()


async def test_a_stalled_round_trip_opens_the_breaker_before_the_store_timeout(
    fresh_redis: RedisServer,
) -> None:
    """A hung Redis is told from a busy router by how long the round trip has been out:
    past STALL_AFTER the breaker opens, long before the store's own (here 10 s) timeout."""
    from canary_mw.engine import AsyncEngine
    from canary_mw.engine.batch import STALL_AFTER
    from canary_mw.stores import async_store_from_url

    writer = store_from_url(fresh_redis.url)
    writer.set_rules(VIP_RULES)
    writer.close()
    engine = AsyncEngine(async_store_from_url(fresh_redis.url, timeout=10))
    try:
        assert await engine.start(wait=5)
        fresh_redis.pause()
        started = asyncio.get_running_loop().time()
        users = itertools.count()

        async def opened() -> bool:  # each new user waits its 50 ms budget, then stable
            decision = await engine.decide(facts(cookies=f"uid=hung{next(users)}"))
            assert decision.target == "stable"
            return engine.breaker.is_open

        try:
            await eventually(opened, timeout=5, what="the breaker open")
        finally:
            fresh_redis.resume()
        took = asyncio.get_running_loop().time() - started
        assert STALL_AFTER <= took < 2
        assert engine.lookup_failures == 0  # nothing failed: it stalled
    finally:
        await engine.aclose()
        await engine.store.aclose()
