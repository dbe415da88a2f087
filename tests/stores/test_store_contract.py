"""The store contract, run over memory://, a real redis-server, Sentinel and Cluster,
through both the blocking and the asyncio API."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from canary_mw import ConfigurationError, RuleError, StoreError
from canary_mw.keys import IPKeyRef, IPListRef, SetRef
from canary_mw.stores import store_from_url
from tests.support.contract import Flavoured, open_store, raw

pytestmark = pytest.mark.anyio

_names = itertools.count()


@pytest.fixture
async def other(backend_url: str, prefix: str) -> AsyncIterator[Flavoured]:
    """A second, independent client of the same store (another instance, the CLI...)."""
    handle = open_store("sync", backend_url, prefix)
    yield handle
    await handle.close()


async def test_empty_store(store: Flavoured) -> None:
    config = await store.get_config()
    assert (config.mode, config.rules, config.version) == (None, None, 0)
    assert await store.get_rules() is None
    assert await store.members("ips") == set()


async def test_mode_is_versioned_and_validated(store: Flavoured, other: Flavoured) -> None:
    assert (await store.set_mode("off")).version == 1
    assert (await store.set_mode("all")).version == 2
    assert (await store.set_mode("all")).changed is False  # no-op: no new version
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        await store.set_mode("everyone")
    config = await other.get_config()
    assert (config.mode, config.version) == ("all", 2)


RULES = {"rules": [{"id": "qa", "when": {"header": "X-QA", "present": True}, "target": "canary"}]}


async def test_rules_are_validated_before_anything_is_written(
    store: Flavoured, other: Flavoured
) -> None:
    await store.set_rules(RULES)
    with pytest.raises(RuleError, match=r"'when\.ip\[0\]'"):
        await store.set_rules({"rules": [{"id": "x", "when": {"ip": ["nope"]}}]})
    with pytest.raises(RuleError):
        await store.set_rules("{broken")
    stored = await other.get_rules()
    assert stored is not None
    assert stored.to_document() == RULES
    assert (await other.get_config()).version == 1
    await store.clear_rules()
    assert await other.get_rules() is None


async def test_members(store: Flavoured, other: Flavoured) -> None:
    assert (await store.add_members("vip", ["1", "2", "3"])).count == 3
    assert (await store.add_members("vip", ["3", "4"])).count == 1
    assert (await store.remove_members("vip", ["1", "9"])).count == 1
    assert await other.members("vip") == {"2", "3", "4"}
    assert (await store.remove_members("vip", ["2", "3", "4"])).count == 3
    assert await other.members("vip") == set()
    with pytest.raises(ConfigurationError, match="set names"):
        await store.add_members("bad name", ["1"])
    with pytest.raises(ConfigurationError, match="at least one"):
        await store.add_members("vip", [])


async def test_ips_are_normalised_and_validated(store: Flavoured, other: Flavoured) -> None:
    assert (await store.add_ips("ips", ["203.0.113.7", "10.1.0.0/16", "2001:DB8::/32"])).count == 3
    with pytest.raises(ConfigurationError, match=r"did you mean 10\.0\.0\.0/8"):
        await store.add_ips("ips", ["192.0.2.1", "10.0.0.1/8"])
    assert await other.members("ips") == {"203.0.113.7", "10.1.0.0/16", "2001:db8::/32"}
    assert (await store.remove_ips("ips", ["203.0.113.7"])).count == 1


async def test_read_state(store: Flavoured, backend_url: str, prefix: str) -> None:
    await store.add_ips("office", ["10.1.0.0/16"])
    await store.set_mode("off")
    raw(backend_url, "SET", f"{prefix}ip_lists", json.dumps(["192.0.2.1"]))
    ref = IPListRef(f"{prefix}ip_lists")
    state = await store.read_state({"office", "empty"}, {ref, IPListRef(f"{prefix}none")})
    assert state.config == {b"mode": b"off", b"version": b"2"}
    assert state.health == {}
    assert set(state.ip_sets["office"]) == {b"10.1.0.0/16"}
    assert set(state.ip_sets["empty"]) == set()
    assert state.ip_lists[ref] == b'["192.0.2.1"]'
    assert state.ip_lists[IPListRef(f"{prefix}none")] is None


async def test_lookup(store: Flavoured, backend_url: str, prefix: str) -> None:
    await store.add_members("vip", ["42"])
    ip = f"{prefix}198.51.100.7"  # the legacy key is the bare IP; prefixed here for isolation
    raw(backend_url, "SET", ip, ip)
    raw(backend_url, "SET", f"{prefix}198.51.100.8", "something-else")
    await store.warm()  # lookups are request-time calls with a 50 ms budget: connect first
    probes = [
        (SetRef("vip"), "42"),
        (SetRef("vip"), "43"),
        (SetRef("nobody"), "42"),
        (IPKeyRef(), ip),
        (IPKeyRef(), f"{prefix}198.51.100.8"),
        (IPKeyRef(), f"{prefix}198.51.100.9"),
    ]
    answers = await store.lookup(probes)
    assert [answers[probe] for probe in probes] == [True, False, False, True, False, False]


async def test_warm_then_lookup_within_the_budget(store: Flavoured) -> None:
    await store.add_members("vip", ["1"])
    await store.warm()
    for _ in range(20):
        assert await store.lookup([(SetRef("vip"), "1")]) == {(SetRef("vip"), "1"): True}


async def test_garbage_comes_back_per_item_not_as_a_crash(
    store: Flavoured, backend_url: str, prefix: str
) -> None:
    await store.add_ips("ips", ["10.0.0.1"])
    await store.warm()
    raw(backend_url, "SET", f"{prefix}config", "not a hash")
    raw(backend_url, "SET", f"{prefix}set:office", "not a set")
    state = await store.read_state({"office", "ips"}, ())
    assert isinstance(state.config, Exception)
    assert isinstance(state.ip_sets["office"], Exception)
    assert set(state.ip_sets["ips"]) == {b"10.0.0.1"}  # the rest of the read still worked
    answers = await store.lookup([(SetRef("office"), "x"), (SetRef("ips"), "10.0.0.1")])
    assert answers == {(SetRef("ips"), "10.0.0.1"): True}  # the broken probe is "unknown"
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.get_config()
    with pytest.raises(StoreError, match="WRONGTYPE"):  # writes say so too
        await store.set_mode("off")


async def test_notifications_reach_other_clients(store: Flavoured, other: Flavoured) -> None:
    subscription = await store.subscribe()
    try:
        first = await subscription.get(5.0)
        assert first is not None
        assert first[0] == "subscribe"
        await other.add_members("vip", ["7"])
        notice = await subscription.get(5.0)
        assert notice is not None
        assert notice[0] == "message"
        assert json.loads(notice[1]) == {"what": "set", "name": "vip"}
        await other.set_mode("all")
        notice = await subscription.get(5.0)
        assert notice is not None
        assert json.loads(notice[1]) == {"what": "mode", "name": "all"}
    finally:
        await subscription.close()


async def test_prefixes_isolate_stores(store: Flavoured, backend_url: str, prefix: str) -> None:
    await store.add_members("vip", ["1"])
    await store.set_mode("off")
    neighbour = store_from_url(backend_url, prefix=prefix + "other:")
    try:
        assert neighbour.members("vip") == set()
        assert neighbour.get_config().mode is None
    finally:
        neighbour.close()


@pytest.fixture(params=["memory", "redis", "sentinel"])
def numbered_db_url(request: pytest.FixtureRequest) -> str:
    """Backends with numbered databases (a cluster only has database 0)."""
    if request.param == "memory":
        return f"memory://contract-{next(_names)}"
    server = request.getfixturevalue({"redis": "redis_srv"}.get(request.param, request.param))
    return str(server.url)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_legacy_data_in_another_database(
    numbered_db_url: str, prefix: str, flavour: str
) -> None:
    ip = "198.51.100.77"
    raw(numbered_db_url, "SET", ip, ip, db=2)
    raw(numbered_db_url, "SET", f"{prefix}ip_lists", '["10.0.0.0/8"]', db=2)
    store = open_store(flavour, numbered_db_url, prefix)
    try:
        await store.warm([None, 2])
        answers = await store.lookup([(IPKeyRef(2), ip), (IPKeyRef(None), ip)])
        assert answers == {(IPKeyRef(2), ip): True, (IPKeyRef(None), ip): False}
        ref = IPListRef(f"{prefix}ip_lists", 2)
        state = await store.read_state((), {ref})
        assert state.ip_lists[ref] == b'["10.0.0.0/8"]'
    finally:
        await store.close()
        raw(numbered_db_url, "DEL", ip, f"{prefix}ip_lists", db=2)


def test_cluster_refuses_other_databases(cluster: Any) -> None:
    store = store_from_url(cluster.url)
    try:
        with pytest.raises(StoreError, match="only database 0"):
            store.lookup([(IPKeyRef(2), "1.2.3.4")])
    finally:
        store.close()
