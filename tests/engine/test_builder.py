"""SnapshotBuilder (engine/builder.py) on good data: what a store read becomes, which sets it
asks for, and what it keeps between reads. Bad data: tests/stores/test_invalid_data.py."""

from __future__ import annotations

import json

from canary_mw.engine.builder import SnapshotBuilder
from canary_mw.ipmatch import parse_ip
from canary_mw.keys import IPListRef
from canary_mw.rules import DEFAULT_RULES, parse_rules
from canary_mw.stores.layout import StoreState

OFFICE = [{"id": "office", "when": {"ip_in_set": "office"}},
          {"id": "legacy", "when": {"legacy_ip_list": {"key": "white", "db": 2}}}]  # fmt: skip
WHITE = IPListRef("white", db=2)


def config(**values: object) -> dict[bytes, bytes]:
    return {
        key.encode(): (value if isinstance(value, str) else json.dumps(value)).encode()
        for key, value in values.items()
    }


def test_before_any_read_it_is_the_defaults_and_not_loaded() -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    snapshot = builder.current
    assert (snapshot.loaded, snapshot.mode, snapshot.ruleset, snapshot.version) == (
        False, "rules", DEFAULT_RULES, 0
    )  # fmt: skip


def test_a_read_becomes_mode_rules_version_and_the_sets_the_rules_use() -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    first = builder.update(StoreState(config(mode="all", rules=OFFICE, version="12")))
    assert (first.loaded, first.mode, first.version) == (True, "all", 12)
    assert [rule.id for rule in first.rules] == ["office", "legacy"]
    # The new rules use sets this read did not hold: the engine reads again for them.
    assert builder.wants() == (frozenset({"office"}), frozenset({WHITE}))
    assert not builder.covers(StoreState({}))
    state = StoreState(
        config(mode="rules", rules=OFFICE, version="13"),
        ip_sets={"office": [b"10.0.0.0/8", b"not an address"]},
        ip_lists={WHITE: b'["203.0.113.7"]'},
    )
    assert builder.covers(state)
    second = builder.update(state)
    assert second.mode == "rules"
    assert parse_ip("10.1.2.3") in second.ip_sets["office"]
    assert parse_ip("203.0.113.7") in second.ip_lists[WHITE]
    assert parse_ip("198.51.100.1") not in second.ip_lists[WHITE]


def test_a_set_missing_from_a_read_keeps_its_last_matcher() -> None:
    builder = SnapshotBuilder(parse_rules(OFFICE))
    builder.update(StoreState(config(), ip_sets={"office": [b"10.0.0.0/8"]}))
    later = builder.update(StoreState(config()))  # e.g. a partial read
    assert parse_ip("10.9.9.9") in later.ip_sets["office"]


def test_a_set_never_read_stays_absent_so_its_rule_is_unknown() -> None:
    snapshot = SnapshotBuilder(parse_rules(OFFICE)).update(StoreState(config()))
    assert "office" not in snapshot.ip_sets
    assert WHITE not in snapshot.ip_lists


def test_no_rules_in_the_store_means_the_default_rules() -> None:
    custom = parse_rules(OFFICE)
    snapshot = SnapshotBuilder(custom).update(StoreState(config(mode="rules")))
    assert snapshot.ruleset is custom


def test_health_records_eject_their_backend_until_they_lapse() -> None:
    record = {"healthy": False, "since": 1000.0, "until": 2000.0, "reason": "refused", "by": "a"}
    state = StoreState(config(), health={b"http://canary:8000": json.dumps(record).encode()})
    builder = SnapshotBuilder(DEFAULT_RULES)
    assert builder.update(state, now=1500.0).ejected == {"http://canary:8000"}
    lapsed = builder.update(state, now=2500.0)
    assert lapsed.ejected == frozenset()
    assert lapsed.health_lapsed == {"http://canary:8000"}
