"""Table-driven tests of the pure decision: every leaf, the combinators, order, overrides,
modes, named upstreams, IPv6, and unknown membership answers."""

from __future__ import annotations

from typing import Any

import pytest

from canary_mw import ASGIFacts, Overrides, Snapshot, decide, parse_rules
from canary_mw.clientip import ClientIPResolver
from canary_mw.ipmatch import IPMatcher
from canary_mw.keys import IPKeyRef, IPListRef, SetRef


def scope(
    ip: str = "198.51.100.1",
    *,
    method: str = "GET",
    path: str = "/",
    query: str = "",
    host: str = "example.org",
    headers: dict[str, str] | None = None,
    cookies: str | None = None,
) -> dict[str, Any]:
    raw = [(b"host", host.encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookies is not None:
        raw.append((b"cookie", cookies.encode()))
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": raw,
        "client": (ip, 40000),
    }


def rule(when: dict[str, Any], target: str = "canary", rule_id: str = "r") -> dict[str, Any]:
    return {"id": rule_id, "when": when, "target": target}


VIP = SetRef("vip")

# (id, rules, request scope, membership answers, expected target, expected reason/rule)
# fmt: off
CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], dict[Any, bool], str, str]] = [
    ("no rules: stable", [], scope(), {}, "stable", "no-match"),
    # -- client IP list
    ("ip in cidr", [rule({"ip": ["198.51.100.0/24"]})], scope(), {}, "canary", "rule:r"),
    ("ip not in cidr", [rule({"ip": ["10.0.0.0/8"]})], scope(), {}, "stable", "no-match"),
    ("ip exact", [rule({"ip": ["198.51.100.1"]})], scope(), {}, "canary", "rule:r"),
    ("ipv6 in cidr", [rule({"ip": ["2001:db8::/32"]})], scope("2001:db8::7"), {}, "canary", "rule:r"),
    ("ipv6 outside", [rule({"ip": ["2001:db8::/32"]})], scope("2001:db9::7"), {}, "stable", "no-match"),
    ("ipv4-mapped peer", [rule({"ip": ["198.51.100.1"]})], scope("::ffff:198.51.100.1"), {}, "canary", "rule:r"),
    ("ipv4 rule no v6 match", [rule({"ip": ["0.0.0.0/0"]})], scope("2001:db8::1"), {}, "stable", "no-match"),
    # -- client IP in a store set (loaded into the snapshot)
    ("ip in set", [rule({"ip_in_set": "office"})], scope("10.1.2.3"), {}, "canary", "rule:r"),
    ("ip not in set", [rule({"ip_in_set": "office"})], scope("10.9.2.3"), {}, "stable", "no-match"),
    ("ip set v6", [rule({"ip_in_set": "office"})], scope("fd00::1"), {}, "canary", "rule:r"),
    ("ip set not loaded: unknown", [rule({"ip_in_set": "absent"})], scope(), {}, "stable", "unknown:r"),
    # -- header
    ("header equals", [rule({"header": "X-Tester", "equals": "yes"})], scope(headers={"X-Tester": "yes"}), {}, "canary", "rule:r"),
    ("header name case", [rule({"header": "x-TESTER", "equals": "yes"})], scope(headers={"X-Tester": "yes"}), {}, "canary", "rule:r"),
    ("header value case matters", [rule({"header": "X-Tester", "equals": "yes"})], scope(headers={"X-Tester": "YES"}), {}, "stable", "no-match"),
    ("header missing", [rule({"header": "X-Tester", "equals": "yes"})], scope(), {}, "stable", "no-match"),
    ("header one_of", [rule({"header": "X-Team", "one_of": ["qa", "dev"]})], scope(headers={"X-Team": "dev"}), {}, "canary", "rule:r"),
    ("header matches", [rule({"header": "User-Agent", "matches": "Mobile|Android"})], scope(headers={"User-Agent": "x Android y"}), {}, "canary", "rule:r"),
    ("header present", [rule({"header": "X-Beta", "present": True})], scope(headers={"X-Beta": ""}), {}, "canary", "rule:r"),
    ("header absent", [rule({"header": "X-Beta", "present": False})], scope(), {}, "canary", "rule:r"),
    ("header in set", [rule({"header": "X-User", "in_set": "vip"})], scope(headers={"X-User": "42"}), {(VIP, "42"): True}, "canary", "rule:r"),
    # -- cookie
    ("cookie equals", [rule({"cookie": "beta", "equals": "1"})], scope(cookies="a=b; beta=1"), {}, "canary", "rule:r"),
    ("cookie quoted", [rule({"cookie": "beta", "equals": "1"})], scope(cookies='beta="1"'), {}, "canary", "rule:r"),
    ("cookie in set yes", [rule({"cookie": "uid", "in_set": "vip"})], scope(cookies="uid=42"), {(VIP, "42"): True}, "canary", "rule:r"),
    ("cookie in set no", [rule({"cookie": "uid", "in_set": "vip"})], scope(cookies="uid=43"), {(VIP, "43"): False}, "stable", "no-match"),
    ("cookie in set unknown", [rule({"cookie": "uid", "in_set": "vip"})], scope(cookies="uid=44"), {}, "stable", "unknown:r"),
    ("cookie in set no cookie", [rule({"cookie": "uid", "in_set": "vip"})], scope(), {}, "stable", "no-match"),
    ("cookie in set huge value", [rule({"cookie": "uid", "in_set": "vip"})], scope(cookies="uid=" + "x" * 600), {}, "stable", "no-match"),
    # -- query
    ("query equals", [rule({"query": "beta", "equals": "on"})], scope(query="a=1&beta=on"), {}, "canary", "rule:r"),
    ("query present", [rule({"query": "beta", "present": True})], scope(query="beta"), {}, "canary", "rule:r"),
    ("query in set", [rule({"query": "uid", "in_set": "vip"})], scope(query="uid=42"), {(VIP, "42"): True}, "canary", "rule:r"),
    # -- host, path, method
    ("host exact", [rule({"host": "example.org"})], scope(), {}, "canary", "rule:r"),
    ("host wildcard", [rule({"host": "*.example.org"})], scope(host="beta.example.org:8080"), {}, "canary", "rule:r"),
    ("host wildcard not apex", [rule({"host": "*.example.org"})], scope(), {}, "stable", "no-match"),
    ("host wildcard not suffix trick", [rule({"host": "*.example.org"})], scope(host="evilexample.org"), {}, "stable", "no-match"),
    ("path prefix", [rule({"path_prefix": ["/beta/", "/new/"]})], scope(path="/new/x"), {}, "canary", "rule:r"),
    ("path prefix miss", [rule({"path_prefix": "/beta/"})], scope(path="/betamax"), {}, "stable", "no-match"),
    ("path regex", [rule({"path_matches": r"^/v\d+/orders$"})], scope(path="/v2/orders"), {}, "canary", "rule:r"),
    ("method", [rule({"method": ["post", "PUT"]})], scope(method="POST"), {}, "canary", "rule:r"),
    ("method miss", [rule({"method": "POST"})], scope(), {}, "stable", "no-match"),
    # -- legacy OpenResty data
    ("legacy ip key", [rule({"legacy_ip_key": True})], scope(), {(IPKeyRef(None), "198.51.100.1"): True}, "canary", "rule:r"),
    ("legacy ip key db", [rule({"legacy_ip_key": {"db": 3}})], scope(), {(IPKeyRef(3), "198.51.100.1"): False}, "stable", "no-match"),
    ("legacy ip list", [rule({"legacy_ip_list": {"key": "ip_lists", "db": 2}})], scope("192.0.2.10"), {}, "canary", "rule:r"),
    ("legacy ip list miss", [rule({"legacy_ip_list": {"key": "ip_lists", "db": 2}})], scope(), {}, "stable", "no-match"),
    # -- all / any / not
    ("all true", [rule({"all": [{"method": "GET"}, {"host": "example.org"}]})], scope(), {}, "canary", "rule:r"),
    ("all one false", [rule({"all": [{"method": "GET"}, {"host": "x.org"}]})], scope(), {}, "stable", "no-match"),
    ("any one true", [rule({"any": [{"method": "POST"}, {"host": "example.org"}]})], scope(), {}, "canary", "rule:r"),
    ("any none true", [rule({"any": [{"method": "POST"}, {"host": "x.org"}]})], scope(), {}, "stable", "no-match"),
    ("not", [rule({"not": {"method": "POST"}})], scope(), {}, "canary", "rule:r"),
    ("nested", [rule({"all": [{"any": [{"ip": ["10.0.0.0/8"]}, {"header": "X-QA", "present": True}]}, {"not": {"path_prefix": "/admin"}}]})], scope(headers={"X-QA": "1"}, path="/shop"), {}, "canary", "rule:r"),
    ("nested excluded", [rule({"all": [{"any": [{"ip": ["10.0.0.0/8"]}, {"header": "X-QA", "present": True}]}, {"not": {"path_prefix": "/admin"}}]})], scope(headers={"X-QA": "1"}, path="/admin/x"), {}, "stable", "no-match"),
    # -- three-valued logic with unknown memberships
    ("any unknown but true", [rule({"any": [{"cookie": "uid", "in_set": "vip"}, {"method": "GET"}]})], scope(cookies="uid=9"), {}, "canary", "rule:r"),
    ("any unknown and false", [rule({"any": [{"cookie": "uid", "in_set": "vip"}, {"method": "POST"}]})], scope(cookies="uid=9"), {}, "stable", "unknown:r"),
    ("all unknown but false", [rule({"all": [{"cookie": "uid", "in_set": "vip"}, {"method": "POST"}]})], scope(cookies="uid=9"), {}, "stable", "no-match"),
    ("not unknown stays unknown", [rule({"not": {"cookie": "uid", "in_set": "vip"}})], scope(cookies="uid=9"), {}, "stable", "unknown:r"),
    ("unknown stops before a later canary rule", [rule({"cookie": "uid", "in_set": "vip"}, "stable", "block"), rule({"method": "GET"}, rule_id="all-get")], scope(cookies="uid=9"), {}, "stable", "unknown:block"),
    # -- order and targets
    ("first match wins", [rule({"method": "GET"}, "v2", "a"), rule({"method": "GET"}, "v3", "b")], scope(), {}, "v2", "rule:a"),
    ("stable rule excludes", [rule({"path_prefix": "/admin"}, "stable", "admin"), rule({"method": "GET"}, rule_id="rest")], scope(path="/admin"), {}, "stable", "rule:admin"),
    ("falls through to second", [rule({"path_prefix": "/admin"}, "stable", "admin"), rule({"method": "GET"}, rule_id="rest")], scope(path="/shop"), {}, "canary", "rule:rest"),
    ("named upstream", [rule({"header": "X-Version", "equals": "3"}, "v3", "v3")], scope(headers={"X-Version": "3"}), {}, "v3", "rule:v3"),
    ("disabled rule skipped", [{**rule({"method": "GET"}, rule_id="off"), "enabled": False}], scope(), {}, "stable", "no-match"),
    # -- percentages (bucket values are pinned by test_sticky)
    ("percent 100", [rule({"percent": 100, "by": "cookie:uid"})], scope(cookies="uid=anyone"), {}, "canary", "rule:r"),
    ("percent 0", [rule({"percent": 0, "by": "cookie:uid"})], scope(cookies="uid=anyone"), {}, "stable", "no-match"),
    ("percent no key", [rule({"percent": 100, "by": "cookie:uid"})], scope(), {}, "stable", "no-match"),
    ("percent by ip", [rule({"percent": 100})], scope(), {}, "canary", "rule:r"),
    ("percent by header", [rule({"percent": 100, "by": "header:X-User"})], scope(headers={"X-User": "5"}), {}, "canary", "rule:r"),
]
# fmt: on


def build_snapshot(rules: list[dict[str, Any]], mode: str = "rules") -> Snapshot:
    return Snapshot(
        mode=mode,  # type: ignore[arg-type]
        ruleset=parse_rules({"rules": rules}),
        ip_sets={"office": IPMatcher.from_strings(["10.1.0.0/16", "fd00::/8"])},
        ip_lists={IPListRef("ip_lists", 2): IPMatcher.from_strings(["192.0.2.10"])},
        loaded=True,
    )


def outcome(decision: Any) -> str:
    if decision.rule_id:
        return f"{decision.reason}:{decision.rule_id}"
    return str(decision.reason)


@pytest.mark.parametrize(
    ("rules", "request_scope", "answers", "target", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    rules: list[dict[str, Any]],
    request_scope: dict[str, Any],
    answers: dict[Any, bool],
    target: str,
    reason: str,
) -> None:
    decision = decide(ASGIFacts(request_scope), build_snapshot(rules), answers)
    assert (decision.target, outcome(decision)) == (target, reason)


def test_unknown_lists_the_probes_that_would_settle_it() -> None:
    rules = [
        rule({"any": [{"cookie": "uid", "in_set": "vip"}, {"header": "X-User", "in_set": "vip"}]})
    ]
    facts = ASGIFacts(scope(cookies="uid=1", headers={"X-User": "2"}))
    decision = decide(facts, build_snapshot(rules), {})
    assert decision.pending == ((VIP, "1"), (VIP, "2"))
    settled = decide(facts, build_snapshot(rules), {(VIP, "1"): False, (VIP, "2"): True})
    assert (settled.target, settled.pending) == ("canary", ())


EVERYONE_TO_V2 = [rule({"method": "GET"}, "v2", "get")]


# fmt: off
MODE_CASES = [
        ("off", Overrides(), scope(), "stable", "mode-off"),
        ("all", Overrides(), scope(method="POST"), "canary", "mode-all"),
        ("rules", Overrides(), scope(), "v2", "rule:get"),
        # force header / cookie, values case-insensitive, checked before the mode
        ("rules", Overrides(header="X-Canary"), scope(headers={"X-Canary": "never"}), "stable", "override-header"),
        ("rules", Overrides(header="X-Canary"), scope(method="POST", headers={"X-Canary": "Always"}), "canary", "override-header"),
        ("off", Overrides(header="X-Canary"), scope(headers={"X-Canary": "always"}), "canary", "override-header"),
        ("all", Overrides(cookie="canary"), scope(cookies="canary=never"), "stable", "override-cookie"),
        ("rules", Overrides(cookie="canary"), scope(method="POST", cookies="canary=always"), "canary", "override-cookie"),
        # other values are ignored
        ("rules", Overrides(header="X-Canary"), scope(headers={"X-Canary": "maybe"}), "v2", "rule:get"),
        # header beats cookie
        ("rules", Overrides(header="X-Canary", cookie="canary"), scope(headers={"X-Canary": "never"}, cookies="canary=always"), "stable", "override-header"),
        # overrides disabled: a spoofed force header changes nothing
        ("rules", Overrides(), scope(method="POST", headers={"X-Canary": "always"}, cookies="canary=always"), "stable", "no-match"),
]
# fmt: on


@pytest.mark.parametrize(("mode", "overrides", "request_scope", "target", "reason"), MODE_CASES)
def test_modes_and_overrides(
    mode: str, overrides: Overrides, request_scope: dict[str, Any], target: str, reason: str
) -> None:
    decision = decide(ASGIFacts(request_scope), build_snapshot(EVERYONE_TO_V2, mode), {}, overrides)
    assert (decision.target, outcome(decision)) == (target, reason)


def test_rules_see_the_resolved_client_ip() -> None:
    rules = [rule({"ip": ["203.0.113.0/24"]})]
    spoof = scope("198.51.100.1", headers={"X-Forwarded-For": "203.0.113.5"})
    untrusted = ASGIFacts(spoof)
    trusted = ASGIFacts(spoof, ClientIPResolver(["198.51.100.1"]))
    assert decide(untrusted, build_snapshot(rules), {}).target == "stable"
    assert decide(trusted, build_snapshot(rules), {}).target == "canary"


def test_matching_allocates_no_decision() -> None:
    snapshot = build_snapshot(EVERYONE_TO_V2)
    first = decide(ASGIFacts(scope()), snapshot, {})
    second = decide(ASGIFacts(scope()), snapshot, {})
    assert first is second  # the rule's precomputed Decision


@pytest.mark.parametrize("name", ["", "  ", 5])
def test_bad_override_names(name: Any) -> None:
    from canary_mw import ConfigurationError

    with pytest.raises(ConfigurationError, match="non-empty string"):
        Overrides(header=name)
