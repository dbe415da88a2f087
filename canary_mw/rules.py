"""Rules: the JSON document operators write, its validation, and its compiled form.

A rule document is ``{"rules": [rule, ...]}``; rules are tried in order and the first whose
condition holds decides. A rule is::

    {"id": "office", "when": {"ip": ["10.1.0.0/16"]}, "target": "canary",
     "enabled": true, "description": "office network first"}

The full condition grammar is documented in ``docs/rules.md``. Every error names the rule
and the field (``when.any[1].matches``) and says what would be valid.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import conditions as c
from .errors import RuleError
from .facts import RequestFacts
from .ipmatch import IPMatcher, parse_network
from .keys import IPKeyRef, IPListRef, SetRef
from .outcome import STABLE, Decision
from .regex import Regex, RegexError
from .sticky import threshold

__all__ = [
    "DEFAULT_RULES",
    "Rule",
    "RuleSet",
    "openresty_rules",
    "parse_rules",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_MAX_DEPTH = 32
_MAX_RULES = 1000
_VALUE_SOURCES = ("header", "cookie", "query")
_VALUE_OPS = ("equals", "one_of", "matches", "present", "in_set")
_LEAF_KEYS = (
    "all", "any", "not", "ip", "ip_in_set", "header", "cookie", "query", "host",
    "path_prefix", "path_matches", "method", "percent", "legacy_ip_key", "legacy_ip_list",
)  # fmt: skip


def valid_name(value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def _client_ip_text(facts: RequestFacts) -> str | None:
    address = facts.client_ip
    return None if address is None else str(address)


class _Compiler:
    """Validates one rule's condition tree and builds its nodes, collecting what it needs."""

    def __init__(self, rule_id: str):
        self.rule_id = rule_id
        self.ip_sets: set[str] = set()
        self.ip_lists: set[IPListRef] = set()
        self.lookup_dbs: set[int | None] = set()

    def fail(self, path: str, message: str) -> RuleError:
        return RuleError(message, rule=self.rule_id, field=path)

    def compile(self, spec: object, path: str, depth: int = 0) -> c.Node:
        if depth > _MAX_DEPTH:
            raise self.fail(path, f"conditions nest deeper than {_MAX_DEPTH} levels")
        if not isinstance(spec, Mapping) or not spec:
            raise self.fail(path, 'a condition is a JSON object such as {"ip": ["10.0.0.0/8"]}')
        kind = next((key for key in _LEAF_KEYS if key in spec), None)
        if kind is None:
            raise self.fail(
                path, f"unknown condition {sorted(spec)}; expected one of {list(_LEAF_KEYS)}"
            )
        handler: Callable[[Mapping[str, Any], str, int], c.Node] = getattr(self, f"_{kind}")
        return handler(spec, path, depth)

    def _only(self, spec: Mapping[str, Any], path: str, *allowed: str) -> None:
        extra = sorted(set(spec) - set(allowed))
        if extra:
            raise self.fail(path, f"unexpected field(s) {extra} next to {allowed[0]!r}")

    def _strings(self, value: object, path: str, what: str) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.fail(path, f"expected {what} or a non-empty list of them")
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{path}[{index}]", f"expected {what}, got {item!r}")
        return items

    def _regex(self, value: object, path: str) -> Regex:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "expected a regular expression string")
        try:
            return Regex(value)
        except RegexError as exc:
            raise self.fail(path, str(exc)) from None

    def _set_name(self, value: object, path: str) -> str:
        if not valid_name(value):
            raise self.fail(path, f"set names are 1-64 of [A-Za-z0-9_.:-], got {value!r}")
        assert isinstance(value, str)
        return value

    def _db(self, value: object, path: str) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise self.fail(path, f"expected a database number 0-255, got {value!r}")
        return value

    # -- combinators -------------------------------------------------------------------
    def _children(
        self, spec: Mapping[str, Any], path: str, depth: int, kind: str
    ) -> tuple[c.Node, ...]:
        self._only(spec, path, kind)
        items = spec[kind]
        if not isinstance(items, list) or not items:
            raise self.fail(f"{path}.{kind}", "expected a non-empty list of conditions")
        return tuple(
            self.compile(item, f"{path}.{kind}[{index}]", depth + 1)
            for index, item in enumerate(items)
        )

    def _all(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        return c.All(self._children(spec, path, depth, "all"))

    def _any(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        return c.Any(self._children(spec, path, depth, "any"))

    def _not(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "not")
        return c.Not(self.compile(spec["not"], f"{path}.not", depth + 1))

    # -- client address ----------------------------------------------------------------
    def _ip(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "ip")
        entries = self._strings(spec["ip"], f"{path}.ip", "an address or CIDR")
        networks = []
        for index, entry in enumerate(entries):
            try:
                networks.append(parse_network(entry))
            except ValueError as exc:
                raise self.fail(f"{path}.ip[{index}]", str(exc)) from None
        return c.IPIn(IPMatcher(networks))

    def _ip_in_set(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "ip_in_set")
        name = self._set_name(spec["ip_in_set"], f"{path}.ip_in_set")
        self.ip_sets.add(name)
        return c.IPInSet(name)

    def _legacy_ip_key(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "legacy_ip_key")
        options = spec["legacy_ip_key"]
        if options is True:
            options = {}
        if not isinstance(options, Mapping):
            raise self.fail(f"{path}.legacy_ip_key", 'expected true or {"db": N}')
        self._only(options, f"{path}.legacy_ip_key", "db")
        db = self._db(options.get("db"), f"{path}.legacy_ip_key.db")
        self.lookup_dbs.add(db)
        return c.IPKey(IPKeyRef(db))

    def _legacy_ip_list(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "legacy_ip_list")
        options = spec["legacy_ip_list"]
        if isinstance(options, str):
            options = {"key": options}
        where = f"{path}.legacy_ip_list"
        if not isinstance(options, Mapping) or not isinstance(options.get("key"), str):
            raise self.fail(where, 'expected a key name or {"key": "ip_lists", "db": 2}')
        self._only(options, where, "key", "db")
        if not options["key"]:
            raise self.fail(f"{where}.key", "the key name must not be empty")
        ref = IPListRef(options["key"], self._db(options.get("db"), f"{where}.db"))
        self.ip_lists.add(ref)
        return c.IPInList(ref)

    # -- header / cookie / query values ------------------------------------------------
    def _value(self, spec: Mapping[str, Any], path: str, source: str) -> c.Node:
        name = spec[source]
        if not isinstance(name, str) or not name:
            raise self.fail(f"{path}.{source}", f"expected the {source} name")
        ops = [op for op in _VALUE_OPS if op in spec]
        if len(ops) != 1:
            raise self.fail(
                path, f"a {source} condition needs exactly one of {list(_VALUE_OPS)}, got {ops}"
            )
        op = ops[0]
        self._only(spec, path, source, op)
        read = self._reader(source, name)
        arg = spec[op]
        where = f"{path}.{op}"
        if op == "equals":
            if not isinstance(arg, str):
                raise self.fail(where, "expected a string")
            return c.ValueEquals(read, arg)
        if op == "one_of":
            return c.ValueOneOf(read, frozenset(self._strings(arg, where, "a string")))
        if op == "matches":
            return c.ValueMatches(read, self._regex(arg, where))
        if op == "present":
            if not isinstance(arg, bool):
                raise self.fail(where, "expected true or false")
            return c.ValuePresent(read, arg)
        return c.ValueInSet(read, SetRef(self._set_name(arg, where)))

    def _reader(self, source: str, name: str) -> c.Reader:
        if source == "ip":
            return _client_ip_text
        if source == "header":
            name = name.lower()
        reader: c.Reader = operator.methodcaller(source, name)
        return reader

    def _header(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        return self._value(spec, path, "header")

    def _cookie(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        return self._value(spec, path, "cookie")

    def _query(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        return self._value(spec, path, "query")

    # -- request line ------------------------------------------------------------------
    def _host(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "host")
        exact, suffixes = set(), []
        names = self._strings(spec["host"], f"{path}.host", "a host name")
        for index, name in enumerate(names):
            host = name.lower()
            if host.startswith("*."):
                suffixes.append(host[1:])
            elif "*" in host:
                raise self.fail(f"{path}.host[{index}]", "only a leading '*.' wildcard is allowed")
            else:
                exact.add(host)
        return c.Host(frozenset(exact), tuple(suffixes))

    def _path_prefix(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "path_prefix")
        prefixes = self._strings(spec["path_prefix"], f"{path}.path_prefix", "a path")
        for index, prefix in enumerate(prefixes):
            if not prefix.startswith("/"):
                raise self.fail(f"{path}.path_prefix[{index}]", "a path prefix starts with '/'")
        return c.PathPrefix(tuple(prefixes))

    def _path_matches(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "path_matches")
        return c.PathMatches(self._regex(spec["path_matches"], f"{path}.path_matches"))

    def _method(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "method")
        methods = self._strings(spec["method"], f"{path}.method", "an HTTP method")
        return c.Method(frozenset(method.upper() for method in methods))

    def _percent(self, spec: Mapping[str, Any], path: str, depth: int) -> c.Node:
        self._only(spec, path, "percent", "by", "salt")
        value = spec["percent"]
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not 0 <= value <= 100
        ):
            raise self.fail(f"{path}.percent", f"expected a number from 0 to 100, got {value!r}")
        by = spec.get("by", "ip")
        source, _, name = by.partition(":") if isinstance(by, str) else ("", "", "")
        if not (by == "ip" or (source in _VALUE_SOURCES and name)):
            raise self.fail(
                f"{path}.by",
                f"expected 'ip', 'cookie:NAME', 'header:NAME' or 'query:NAME', got {by!r}",
            )
        salt = spec.get("salt", self.rule_id)
        if not isinstance(salt, str):
            raise self.fail(f"{path}.salt", "expected a string")
        read = self._reader("ip" if by == "ip" else source, name)
        return c.Percent(read, salt, threshold(value))


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. ``spec`` is its JSON form, kept for export and display."""

    id: str
    target: str
    condition: c.Node = field(repr=False, compare=False)
    spec: Mapping[str, Any] = field(repr=False)
    enabled: bool = True
    decision: Decision = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once so a matching request allocates nothing.
        object.__setattr__(self, "decision", Decision(self.target, "rule", self.id))


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An ordered, validated list of rules and the store data they refer to."""

    rules: tuple[Rule, ...] = ()
    ip_sets: frozenset[str] = frozenset()
    ip_lists: frozenset[IPListRef] = frozenset()
    #: Databases that request-time lookups use besides the store's own (legacy IP keys).
    lookup_dbs: frozenset[int | None] = frozenset()
    #: What a sticky cookie pins (stickycookie.py): the first sticky percentage the enabled
    #: rules reach, as (its rule's position among them, the node, the rule's target, whether
    #: it is negated: under ``not``, the node's "in" is the rule's "out").
    pinned: tuple[int, c.Percent, str, bool] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "pinned", _first_percent(self.active))

    @property
    def active(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    @property
    def targets(self) -> frozenset[str]:
        """Upstream names the rules can send traffic to (``stable`` excluded)."""
        return frozenset(rule.target for rule in self.rules if rule.target != STABLE)

    def to_document(self) -> dict[str, Any]:
        return {"rules": [dict(rule.spec) for rule in self.rules]}

    def to_json(self) -> str:
        return json.dumps(self.to_document(), separators=(",", ":"), sort_keys=False)


def _percent_in(node: c.Node, negated: bool = False) -> tuple[c.Percent, bool] | None:
    if isinstance(node, c.Percent):
        return node, negated
    if isinstance(node, (c.All, c.Any)):
        for child in node.children:
            if (found := _percent_in(child, negated)) is not None:
                return found
    elif isinstance(node, c.Not):
        return _percent_in(node.child, not negated)
    return None


def _first_percent(rules: tuple[Rule, ...]) -> tuple[int, c.Percent, str, bool] | None:
    for position, rule in enumerate(rules):
        found = _percent_in(rule.condition)
        if found is not None and rule.target != STABLE:
            return position, found[0], rule.target, found[1]
    return None


_RULE_FIELDS = frozenset({"id", "when", "target", "enabled", "description"})


def _compile_rule(position: int, spec: object, seen: set[str]) -> tuple[Rule, _Compiler]:
    label = f"#{position}"
    if not isinstance(spec, Mapping):
        raise RuleError("a rule is a JSON object with 'id', 'when' and 'target'", rule=label)
    rule_id = spec.get("id")
    if not valid_name(rule_id):
        raise RuleError(
            "'id' must be 1-64 of [A-Za-z0-9_.:-] starting with a letter or digit, "
            f"got {rule_id!r}",
            rule=label,
            field="id",
        )
    assert isinstance(rule_id, str)
    if rule_id in seen:
        raise RuleError("duplicate rule id; ids must be unique", rule=rule_id, field="id")
    seen.add(rule_id)
    extra = sorted(set(spec) - _RULE_FIELDS)
    if extra:
        raise RuleError(f"unknown field(s) {extra}; allowed: {sorted(_RULE_FIELDS)}", rule=rule_id)
    target = spec.get("target", "canary")
    if not valid_name(target):
        raise RuleError(
            f"'target' is 'stable' or an upstream name, got {target!r}",
            rule=rule_id,
            field="target",
        )
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("expected true or false", rule=rule_id, field="enabled")
    if not isinstance(spec.get("description", ""), str):
        raise RuleError("expected a string", rule=rule_id, field="description")
    if "when" not in spec:
        raise RuleError("missing the condition", rule=rule_id, field="when")
    compiler = _Compiler(rule_id)
    condition = compiler.compile(spec["when"], "when")
    return Rule(rule_id, target, condition, dict(spec), enabled), compiler


def parse_rules(document: str | bytes | Mapping[str, Any] | Sequence[Any]) -> RuleSet:
    """Validate a rule document (JSON text, a dict, or a bare list of rules) into a RuleSet.

    Raises :class:`~canary_mw.errors.RuleError` naming the rule and field at the first problem.
    """
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RuleError(f"the rule document is not valid JSON: {exc}") from None
        except RecursionError:
            # json raises this, not ValueError, for arrays nested thousands deep; a document
            # like that read from the store must be refused like any other, not crash a router.
            raise RuleError(
                f"the rule document nests too deeply (conditions allow {_MAX_DEPTH} levels)"
            ) from None
    if isinstance(document, Mapping):
        extra = sorted(set(document) - {"rules"})
        if extra or "rules" not in document:
            raise RuleError(f'expected {{"rules": [...]}}, got the field(s) {sorted(document)}')
        items = document["rules"]
    else:
        items = document
    if not isinstance(items, list):
        raise RuleError('"rules" must be a list of rules')
    if len(items) > _MAX_RULES:
        raise RuleError(f"at most {_MAX_RULES} rules are allowed, got {len(items)}")
    seen: set[str] = set()
    rules, ip_sets, ip_lists, dbs = [], set(), set(), set()
    for position, spec in enumerate(items):
        rule, compiler = _compile_rule(position, spec, seen)
        rules.append(rule)
        ip_sets |= compiler.ip_sets
        ip_lists |= compiler.ip_lists
        dbs |= compiler.lookup_dbs
    return RuleSet(tuple(rules), frozenset(ip_sets), frozenset(ip_lists), frozenset(dbs))


def openresty_rules(
    *,
    ip_keys: bool | int = True,
    ip_list: str | None = None,
    ip_list_db: int | None = None,
    target: str = "canary",
) -> RuleSet:
    """Rules that read the classic OpenResty gray-release data, for ``default_rules=``.

    ``ip_keys``: route a client whose IP is a key holding that IP (``SET 1.2.3.4 1.2.3.4``);
    ``True`` for the store's database or a database number. ``ip_list``: the key of a JSON
    list of IPs (e.g. ``"ip_lists"``), in ``ip_list_db``.

    >>> engine = Engine(store, default_rules=openresty_rules(ip_list="ip_lists", ip_list_db=2))
    """
    rules: list[dict[str, Any]] = []
    if ip_keys is not False:
        db = None if ip_keys is True else ip_keys
        rules.append({"id": "openresty-ip-keys", "when": {"legacy_ip_key": {"db": db}}})
    if ip_list is not None:
        list_ref = {"key": ip_list, "db": ip_list_db}
        rules.append({"id": "openresty-ip-list", "when": {"legacy_ip_list": list_ref}})
    for rule in rules:
        rule["target"] = target
    return parse_rules({"rules": rules})


#: Rules used while the store holds no rule document: the client IP in the set ``ips``, or a
#: ``canary_user`` cookie / ``X-Canary-User`` header whose value is in the set ``users``,
#: goes to the canary. So ``SADD canary:set:ips 203.0.113.7`` works with no setup at all.
DEFAULT_RULES = parse_rules(
    {
        "rules": [
            {"id": "ips", "when": {"ip_in_set": "ips"}, "target": "canary"},
            {
                "id": "users",
                "when": {
                    "any": [
                        {"cookie": "canary_user", "in_set": "users"},
                        {"header": "X-Canary-User", "in_set": "users"},
                    ]
                },
                "target": "canary",
            },
        ]
    }
)
