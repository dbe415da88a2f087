"""Invalid data in the store: routers keep the last good value, and when they have none (a
router started while the bad value is there) the log says what is in force instead."""

from __future__ import annotations

import logging

import pytest

from canary_mw.engine.builder import SnapshotBuilder
from canary_mw.ipmatch import parse_network
from canary_mw.keys import IPListRef
from canary_mw.rules import DEFAULT_RULES, parse_rules
from canary_mw.stores.layout import StoreState

LEGACY = parse_rules([{"id": "legacy", "when": {"legacy_ip_list": {"key": "ip_lists"}}}])
REF = IPListRef("ip_lists")
ADDRESS = parse_network("203.0.113.7").network_address


def state(config: dict[bytes, bytes], ip_list: bytes | None = None) -> StoreState:
    return StoreState(config, ip_lists={REF: ip_list})


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="canary_mw")
    return caplog


def test_invalid_ip_list_keeps_the_last_good_list(logs: pytest.LogCaptureFixture) -> None:
    builder = SnapshotBuilder(LEGACY)
    builder.update(state({}, b'["203.0.113.7"]'))
    snapshot = builder.update(state({}, b"[not json"))
    assert ADDRESS in snapshot.ip_lists[REF]
    (message,) = errors(logs)
    assert "invalid IP list key 'ip_lists' (db 0) in the store (not JSON" in message
    assert message.endswith("in force: the last good members")


def test_invalid_ip_list_at_start_says_the_condition_is_unknown(
    logs: pytest.LogCaptureFixture,
) -> None:
    builder = SnapshotBuilder(LEGACY)  # a router (re)started with the bad value still there
    snapshot = builder.update(state({}, b"[not json"))
    assert REF not in snapshot.ip_lists
    (message,) = errors(logs)
    assert "in force: nothing (no valid value read since this router started)" in message
    assert "go to stable" in message


def test_invalid_rules_at_start_say_the_defaults_are_in_force(
    logs: pytest.LogCaptureFixture,
) -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    snapshot = builder.update(state({b"rules": b"{broken"}))
    assert snapshot.ruleset is DEFAULT_RULES
    (message,) = errors(logs)
    assert (
        "in force: the default rules (no valid document read since this router started)" in message
    )


def test_invalid_rules_later_keep_the_last_good(logs: pytest.LogCaptureFixture) -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    builder.update(state({b"rules": b'{"rules": [{"id": "qa", "when": {"method": "GET"}}]}'}))
    snapshot = builder.update(state({b"rules": b"{broken"}))
    assert [rule.id for rule in snapshot.ruleset.rules] == ["qa"]
    assert errors(logs)[0].endswith("in force: the last good rules")


@pytest.mark.parametrize(
    ("first", "in_force"),
    [(None, "in force: mode 'rules' (no valid mode read since this router started)"),
     (b"off", "in force: the last good mode 'off'")],
    ids=["at start", "later"],
)  # fmt: skip
def test_invalid_mode(logs: pytest.LogCaptureFixture, first: bytes | None, in_force: str) -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    if first is not None:
        builder.update(state({b"mode": first}))
    builder.update(state({b"mode": b"banana"}))
    (message,) = errors(logs)
    assert "invalid mode in the store ('banana' is not one of" in message
    assert message.endswith(in_force)
    assert "b'banana'" not in message  # text, not a bytes repr
