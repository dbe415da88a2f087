"""The key layout (stores/layout.py): which Redis keys and commands a read, a lookup and a
set name turn into, and how replies are read back. docs/redis.md documents the same keys."""

from __future__ import annotations

import pytest

from canary_mw.keys import IPKeyRef, IPListRef, SetRef
from canary_mw.stores.layout import Layout


def test_every_key_is_under_the_prefix() -> None:
    layout = Layout("app:")
    keys = [layout.config, layout.channel, layout.audit, layout.health, layout.traffic]
    assert keys == ["app:config", "app:changes", "app:audit", "app:health", "app:traffic"]
    assert layout.set_key("vip.users") == "app:set:vip.users"
    assert Layout().config == "canary:config"


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ü", "a/b"])
def test_a_set_name_outside_the_alphabet_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"1-64 of \[A-Za-z0-9_.:-\]"):
        Layout().set_key(name)


def test_a_read_is_the_config_the_health_the_sets_and_the_lists_in_a_fixed_order() -> None:
    commands, sets, lists = Layout().read_state(
        ["staff", "beta"], [IPListRef("white", db=2), IPListRef("ips")]
    )
    assert sets == ["beta", "staff"]
    assert lists == [IPListRef("ips"), IPListRef("white", db=2)]
    assert commands == [
        (None, ("HGETALL", "canary:config")),
        (None, ("HGETALL", "canary:health")),
        (None, ("SMEMBERS", "canary:set:beta")),
        (None, ("SMEMBERS", "canary:set:staff")),
        (None, ("GET", "ips")),
        (2, ("GET", "white")),
    ]


def test_a_read_reply_is_split_back_by_position() -> None:
    sets, lists = ["beta"], [IPListRef("ips")]
    wrong = ConnectionError("WRONGTYPE")
    state = Layout.parse_state([{b"mode": b"all"}, {}, wrong, b'["10.0.0.1"]'], sets, lists)
    assert state.config == {b"mode": b"all"}
    assert state.ip_sets == {"beta": wrong}  # one failed key fails alone
    assert state.ip_lists == {IPListRef("ips"): b'["10.0.0.1"]'}
    garbled = Layout.parse_state([b"not a hash", {}], [], [])
    assert isinstance(garbled.config, TypeError)


def test_lookups_are_sismember_for_sets_and_get_for_openresty_ip_keys() -> None:
    probes = [(SetRef("vip"), "u1"), (IPKeyRef(db=3), "203.0.113.7")]
    assert Layout().lookup(probes) == [
        (None, ("SISMEMBER", "canary:set:vip", "u1")),
        (3, ("GET", "203.0.113.7")),
    ]


def test_lookup_answers() -> None:
    vip, ip_key = (SetRef("vip"), "u1"), (IPKeyRef(), "203.0.113.7")
    assert Layout.parse_lookup([vip, ip_key], [1, b"203.0.113.7"]) == {vip: True, ip_key: True}
    assert Layout.parse_lookup([vip, ip_key], [0, None]) == {vip: False, ip_key: False}
    # An IP key holds its own address: any other value is not a member.
    assert Layout.parse_lookup([ip_key], [b"1"]) == {ip_key: False}
    # A failed lookup is left out (unknown), never taken for "not a member".
    assert Layout.parse_lookup([vip], [TimeoutError()]) == {}
