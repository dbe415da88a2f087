"""Audited, versioned, atomic changes: the same contract over memory://, Redis, Sentinel and
Cluster, blocking and asyncio."""

from __future__ import annotations

import itertools
import threading

import pytest

from canary_mw import ConfigurationError, RuleError
from canary_mw.stores import store_from_url
from tests.support.contract import Flavoured

pytestmark = pytest.mark.anyio

_names = itertools.count()


async def test_every_change_is_in_the_history(store: Flavoured) -> None:
    await store.set_mode("off", actor="alice@laptop")
    await store.add_ips("ips", ["203.0.113.7"], actor="bob@ci")
    await store.set_rules({"rules": [{"id": "qa", "when": {"method": "GET"}}]}, actor="carol")
    entries = await store.history(10)
    assert [(e.version, e.actor, e.action, e.target) for e in entries] == [
        (3, "carol", "rules import", None),
        (2, "bob@ci", "ip add", "ips"),
        (1, "alice@laptop", "mode", "off"),
    ]
    mode_change, ip_change, rules_change = entries[2], entries[1], entries[0]
    assert mode_change.before == {"mode": None, "rules": None, "upstreams": None}
    assert mode_change.after == {"mode": "off", "rules": None, "upstreams": None}
    assert ip_change.detail == {"set": "ips", "members": ["203.0.113.7"], "count": 1}
    assert rules_change.after["rules"] == {"rules": [{"id": "qa", "when": {"method": "GET"}}]}
    assert all(entry.time.endswith("+00:00") for entry in entries)
    assert len(await store.history(2)) == 2


async def test_invalid_input_writes_nothing(store: Flavoured) -> None:
    await store.set_mode("off")  # version 1
    for bad in (
        store.set_mode("everyone"),
        store.set_rules({"rules": [{"id": "x", "when": {"ip": ["nope"]}}]}),
        store.add_rule({"id": "bad id", "when": {"method": "GET"}}),
        store.add_rule({"id": "x", "when": {"percent": 500}}),
        store.remove_rule("absent"),
        store.set_percent(120),
        store.set_upstream("canary", "ftp://nope"),
        store.set_upstream("stable", "http://x"),
        store.remove_upstream("absent"),
        store.add_ips("ips", ["10.0.0.1/8"]),
        store.add_members("bad name", ["x"]),
        store.add_members("vip", []),
        store.rollback(1000),
    ):
        with pytest.raises((ConfigurationError, RuleError)):
            await bad
    assert (await store.get_config()).version == 1
    assert len(await store.history(100)) == 1


async def test_rule_editing_starts_from_the_defaults(store: Flavoured) -> None:
    await store.add_rule({"id": "qa", "when": {"header": "X-QA", "present": True}}, position=0)
    rules = await store.get_rules()
    assert [rule.id for rule in rules.rules] == ["qa", "ips", "users"]
    with pytest.raises(ConfigurationError, match="exists"):
        await store.add_rule({"id": "qa", "when": {"method": "GET"}})
    await store.remove_rule("users")
    assert [rule.id for rule in (await store.get_rules()).rules] == ["qa", "ips"]


async def test_percent_grows_with_the_same_salt(store: Flavoured) -> None:
    await store.set_percent(5, rule_id="rollout", by="cookie:uid")
    await store.set_percent(20, rule_id="rollout")
    (rule,) = [r for r in (await store.get_rules()).rules if r.id == "rollout"]
    assert rule.spec["when"] == {"percent": 20, "by": "cookie:uid", "salt": "rollout"}
    with pytest.raises(ConfigurationError, match="not a percentage rule"):
        await store.set_percent(10, rule_id="ips")


async def test_upstreams_per_name_and_host(store: Flavoured) -> None:
    await store.set_upstream("canary", "http://canary-b:8000")
    await store.set_upstream("canary", "http://canary-shop:8000", host="Shop.Example.com")
    config = await store.get_config()
    assert config.describe()["upstreams"] == {
        "canary": {"url": "http://canary-b:8000",
                   "hosts": {"shop.example.com": "http://canary-shop:8000"}}
    }  # fmt: skip
    await store.remove_upstream("canary", host="shop.example.com")
    assert (await store.get_config()).describe()["upstreams"] == {
        "canary": {"url": "http://canary-b:8000"}
    }
    await store.remove_upstream("canary")
    assert (await store.get_config()).upstreams is None


async def test_rollback(store: Flavoured) -> None:
    await store.set_rules({"rules": [{"id": "v1", "when": {"method": "GET"}}]})  # version 1
    await store.add_members("users", ["u1"])  # 2: data, not config
    await store.set_mode("all")  # 3
    await store.set_rules({"rules": [{"id": "v2", "when": {"method": "POST"}}]})  # 4
    undone = await store.rollback(actor="ops")  # undo 4: rules v1, mode all
    assert undone.version == 5
    assert [r.id for r in (await store.get_rules()).rules] == ["v1"]
    assert (await store.get_config()).mode == "all"
    await store.rollback(1)  # as right after version 1: rules v1, mode unset
    config = await store.get_config()
    assert (config.mode, config.version) == (None, 6)
    assert await store.members("users") == {"u1"}  # memberships are not rolled back
    await store.rollback(0)  # before anything: the empty config
    assert (await store.get_config()).rules is None
    latest = (await store.history(1))[0]
    assert (latest.action, latest.target, latest.actor) == ("rollback", "0", latest.actor)
    assert (await store.rollback(0)).changed is False  # already there


async def test_health_traffic_and_set_sizes(store: Flavoured) -> None:
    a, b = "http://a:8000", "http://b:8000"
    await store.set_health({a: '{"healthy": false}', b: '{"healthy": true}'})
    await store.set_health({b: '{"healthy": false}'}, lapsed=[a])  # one write, one delete
    await store.add_traffic({"stable": 3, "canary": 1})
    await store.add_traffic({"stable": 2})
    await store.add_members("users", ["a", "b"])
    assert await store.health() == {b: '{"healthy": false}'}
    assert await store.traffic() == {"stable": "5", "canary": "1"}
    assert await store.set_sizes(["users", "ips"]) == {"users": 2, "ips": 0}


def test_ten_concurrent_writers_lose_nothing(backend_url: str, prefix: str) -> None:
    """Ten threads, each with its own client, add and remove rules and users at once."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        store = store_from_url(backend_url, prefix=prefix)
        try:
            for k in range(6):
                store.add_rule({"id": f"w{n}-{k}", "when": {"header": f"X-W{n}", "equals": str(k)}})
                store.add_members("users", [f"user-{n}-{k}"])
                if k % 2 == 0:
                    store.remove_rule(f"w{n}-{k}")
                    store.remove_members("users", [f"user-{n}-{k}"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    check = store_from_url(backend_url, prefix=prefix)
    try:
        rules = {rule.id for rule in check.get_rules().rules}
        expected = {f"w{n}-{k}" for n in range(10) for k in range(6) if k % 2}
        assert rules == expected | {"ips", "users"}
        assert check.members("users") == {
            f"user-{n}-{k}" for n in range(10) for k in range(6) if k % 2
        }
        # every change got its own version: 10 writers x (6 adds + 6 users + 3 + 3 removals)
        assert check.get_config().version == 10 * 18
        assert len(check.history(1000)) == 10 * 18
    finally:
        check.close()


def test_cluster_prefixes_need_a_hash_tag(cluster: object) -> None:
    url = cluster.url  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"use '\{canary\}:'"):
        store_from_url(url, prefix="canary:")
    assert store_from_url(url).prefix == "{canary}:"


async def test_a_write_that_changes_nothing_bumps_nothing_and_records_nothing(
    store: Flavoured,
) -> None:
    await store.add_ips("ips", ["203.0.113.7"])
    await store.add_members("users", ["alice"])
    await store.set_mode("off")
    await store.set_rules({"rules": [{"id": "qa", "when": {"method": "GET"}}]})
    await store.set_percent(5)
    await store.set_upstream("canary", "http://10.0.0.5:8000")
    assert (await store.get_config()).version == 6
    for noop in (
        store.add_ips("ips", ["203.0.113.7"]),  # already there
        store.add_ips("ips", ["203.0.113.7/32"]),  # the same address, written differently
        store.remove_ips("ips", ["192.0.2.1"]),  # never there
        store.add_members("users", ["alice"]),
        store.remove_members("users", ["bob"]),
        store.remove_members("nobody-ever", ["x"]),  # a set that does not exist
        store.set_mode("off"),
        store.set_rules((await store.get_config()).rules),  # the document in force
        store.set_percent(5),
        store.set_upstream("canary", "http://10.0.0.5:8000"),
    ):
        change = await noop
        assert (change.changed, change.version, change.count) == (False, 6, 0)
    assert (await store.get_config()).version == 6
    assert len(await store.history(100)) == 6


async def test_a_set_change_records_what_it_changed(store: Flavoured) -> None:
    await store.add_ips("ips", ["203.0.113.7"])
    change = await store.add_ips("ips", ["203.0.113.7", "192.0.2.1"])
    assert (change.changed, change.version, change.count) == (True, 2, 1)
    (entry,) = await store.history(1)
    assert entry.detail["count"] == 1
