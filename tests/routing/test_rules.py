from __future__ import annotations

import json
from typing import Any

import pytest

from canary_mw import DEFAULT_RULES, RuleError, parse_rules


def one(when: Any, **extra: Any) -> dict[str, Any]:
    return {"rules": [{"id": "r1", "when": when, "target": "canary", **extra}]}


@pytest.mark.parametrize(
    ("document", "rule", "field", "message"),
    [
        ("{not json", None, None, "not valid JSON"),
        ({"rule": []}, None, None, 'expected {"rules"'),
        ({"rules": {}}, None, None, "must be a list"),
        ({"rules": ["x"]}, "#0", None, "a rule is a JSON object"),
        ({"rules": [{"when": {"method": "GET"}}]}, "#0", "id", "'id' must be"),
        ({"rules": [{"id": "bad id!", "when": {"method": "GET"}}]}, "#0", "id", "'id' must be"),
        (
            {
                "rules": [
                    {"id": "a", "when": {"method": "GET"}},
                    {"id": "a", "when": {"method": "GET"}},
                ]
            },
            "a",
            "id",
            "duplicate rule id",
        ),
        (
            {"rules": [{"id": "a", "when": {"method": "GET"}, "colour": 1}]},
            "a",
            None,
            "unknown field",
        ),
        ({"rules": [{"id": "a"}]}, "a", "when", "missing the condition"),
        (one({"method": "GET"}, target="bad target"), "r1", "target", "'target' is"),
        (one({"method": "GET"}, enabled="yes"), "r1", "enabled", "true or false"),
        (one({}), "r1", "when", "a condition is a JSON object"),
        (one([]), "r1", "when", "a condition is a JSON object"),
        (one({"ipp": ["1.2.3.4"]}), "r1", "when", "unknown condition"),
        (one({"ip": []}), "r1", "when.ip", "non-empty list"),
        (one({"ip": ["10.0.0.0/8", "nope"]}), "r1", "when.ip[1]", "not an IP address"),
        (one({"ip": ["10.0.0.1/8"]}), "r1", "when.ip[0]", "did you mean 10.0.0.0/8"),
        (one({"ip": ["10.0.0.0/8"], "extra": 1}), "r1", "when", "unexpected field"),
        (one({"ip_in_set": "bad name!"}), "r1", "when.ip_in_set", "set names"),
        (one({"header": "X-A"}), "r1", "when", "exactly one of"),
        (one({"header": "X-A", "equals": "1", "present": True}), "r1", "when", "exactly one of"),
        (one({"header": "", "equals": "1"}), "r1", "when.header", "header name"),
        (one({"cookie": "c", "equals": 1}), "r1", "when.equals", "expected a string"),
        (one({"cookie": "c", "one_of": []}), "r1", "when.one_of", "non-empty list"),
        (one({"query": "q", "matches": "("}), "r1", "when.matches", "invalid regular expression"),
        (one({"query": "q", "present": "yes"}), "r1", "when.present", "true or false"),
        (one({"cookie": "uid", "in_set": ""}), "r1", "when.in_set", "set names"),
        (one({"host": "a.*.com"}), "r1", "when.host[0]", "only a leading"),
        (one({"path_prefix": "api"}), "r1", "when.path_prefix[0]", "starts with '/'"),
        (one({"path_matches": "[x"}), "r1", "when.path_matches", "invalid regular expression"),
        (one({"method": [1]}), "r1", "when.method[0]", "HTTP method"),
        (one({"percent": 101}), "r1", "when.percent", "from 0 to 100"),
        (one({"percent": True}), "r1", "when.percent", "from 0 to 100"),
        (one({"percent": float("nan")}), "r1", "when.percent", "from 0 to 100"),
        (one({"percent": 5, "by": "session"}), "r1", "when.by", "'cookie:NAME'"),
        (one({"percent": 5, "by": "cookie:"}), "r1", "when.by", "'cookie:NAME'"),
        (one({"percent": 5, "salt": 3}), "r1", "when.salt", "expected a string"),
        (one({"all": []}), "r1", "when.all", "non-empty list"),
        (one({"any": [{"method": "GET"}, {"nope": 1}]}), "r1", "when.any[1]", "unknown condition"),
        (one({"not": {"all": [{"ip": ["x"]}]}}), "r1", "when.not.all[0].ip[0]", "not an IP"),
        (one({"legacy_ip_key": {"db": 300}}), "r1", "when.legacy_ip_key.db", "0-255"),
        (one({"legacy_ip_key": "yes"}), "r1", "when.legacy_ip_key", "expected true"),
        (one({"legacy_ip_list": {"db": 2}}), "r1", "when.legacy_ip_list", "key name"),
        (one({"legacy_ip_list": {"key": "k", "db": -1}}), "r1", "when.legacy_ip_list.db", "0-255"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_invalid_documents_name_rule_and_field(
    document: Any, rule: str | None, field: str | None, message: str
) -> None:
    with pytest.raises(RuleError, match=message) as caught:
        parse_rules(document)
    assert caught.value.rule == rule
    assert caught.value.field == field
    if rule:
        assert repr(rule) in str(caught.value)


def test_deep_nesting_is_refused() -> None:
    condition: dict[str, Any] = {"method": "GET"}
    for _ in range(40):
        condition = {"not": condition}
    with pytest.raises(RuleError, match="nest deeper"):
        parse_rules(one(condition))


EVERY_LEAF = {
    "rules": [
        {"id": "ip", "when": {"ip": ["10.0.0.0/8", "2001:db8::/32"]}},
        {"id": "ipset", "when": {"ip_in_set": "office"}, "target": "v3"},
        {"id": "h", "when": {"header": "X-Tester", "equals": "yes"}, "enabled": False},
        {"id": "c", "when": {"cookie": "uid", "one_of": ["1", "2"]}, "description": "VIPs"},
        {"id": "q", "when": {"query": "beta", "present": True}},
        {"id": "m", "when": {"header": "User-Agent", "matches": "Mobile"}},
        {"id": "s", "when": {"cookie": "uid", "in_set": "vip"}},
        {"id": "host", "when": {"host": ["example.com", "*.example.com"]}},
        {"id": "path", "when": {"any": [{"path_prefix": "/beta/"}, {"path_matches": "^/v2/"}]}},
        {"id": "meth", "when": {"not": {"method": ["POST", "PUT"]}}, "target": "stable"},
        {"id": "pct", "when": {"all": [{"percent": 12.5, "by": "cookie:uid", "salt": "x"}]}},
        {"id": "legacy1", "when": {"legacy_ip_key": True}},
        {"id": "legacy2", "when": {"legacy_ip_list": {"key": "ip_lists", "db": 2}}},
    ]
}


def test_round_trip_through_json() -> None:
    ruleset = parse_rules(json.dumps(EVERY_LEAF))
    again = parse_rules(ruleset.to_json())
    assert again.to_document() == ruleset.to_document() == EVERY_LEAF
    assert [rule.id for rule in ruleset.active] == [
        r["id"] for r in EVERY_LEAF["rules"] if r.get("enabled", True)
    ]
    assert ruleset.ip_sets == {"office"}
    assert {(ref.key, ref.db) for ref in ruleset.ip_lists} == {("ip_lists", 2)}
    assert ruleset.targets == {"canary", "v3"}
    assert ruleset.lookup_dbs == {None}  # legacy_ip_key without a db: the store's own


def test_bare_list_and_bytes_are_accepted() -> None:
    assert parse_rules(EVERY_LEAF["rules"]).to_document() == EVERY_LEAF
    assert parse_rules(json.dumps(EVERY_LEAF).encode()).to_document() == EVERY_LEAF


def test_default_rules_use_ips_and_users_sets() -> None:
    assert DEFAULT_RULES.ip_sets == {"ips"}
    assert [rule.id for rule in DEFAULT_RULES.rules] == ["ips", "users"]
