"""Why a request goes where it goes: the decision with its trace, for ``explain``.

The decision itself is :func:`~canary_mw.decide.decide`'s, and the upstream the routers'
:class:`~canary_mw.targets.Targets`: nothing here decides a request a second way. The trace
asks the same compiled condition objects the routers use for each node's value (true, false
or unknown), and reads the request fact each leaf looks at to say why. It is a separate walk,
run only when someone asks, so the routers' path pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import conditions as c
from .decide import NO_OVERRIDES, Overrides, decide
from .facts import RequestFacts
from .keys import Answers
from .outcome import Decision
from .rules import Rule
from .snapshot import Snapshot
from .sticky import BUCKETS, bucket
from .targets import Targets
from .upstreams import Upstream

__all__ = ["ConditionTrace", "Explanation", "RuleTrace", "explain_decision"]


@dataclass(frozen=True, slots=True)
class ConditionTrace:
    """One node of a rule's condition: its JSON, its value (None: unknown) and why."""

    condition: Mapping[str, Any]
    value: bool | None
    why: str
    children: tuple[ConditionTrace, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "condition": dict(self.condition), "value": _value_name(self.value), "why": self.why,
        }  # fmt: skip
        if self.children:
            data["children"] = [child.to_json() for child in self.children]
        return data


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule in order: ``outcome`` is matched, no match, unknown (stable), disabled or
    not reached (an earlier rule, the mode or an override decided)."""

    id: str
    target: str
    outcome: str
    condition: ConditionTrace | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "target": self.target, "outcome": self.outcome,
            "condition": None if self.condition is None else self.condition.to_json(),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision for one request, as the routers would make it now, and why.

    ``ruled`` is what the rules (or mode, or an override) chose; ``decision`` what is done
    after resolving its upstream (``no-upstream``, ``ejected``: served by stable);
    ``upstream`` the URL a canary request is forwarded to (None: stable serves it)."""

    decision: Decision
    ruled: Decision
    upstream: str | None
    mode: str
    overrides: tuple[str, ...]
    rules: tuple[RuleTrace, ...]
    version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.decision.target,
            "reason": self.decision.reason,
            "rule": self.decision.rule_id,
            "upstream": self.upstream,
            "ruled": {"target": self.ruled.target, "reason": self.ruled.reason,
                      "rule": self.ruled.rule_id},
            "mode": self.mode,
            "overrides": list(self.overrides),
            "rules": [rule.to_json() for rule in self.rules],
            "version": self.version,
        }  # fmt: skip


def _value_name(value: bool | None) -> str:
    return "unknown" if value is None else "true" if value else "false"


def _shown(value: str | None) -> str:
    return "absent" if value is None else repr(value)


def _leaf_why(
    node: c.Node, spec: Mapping[str, Any], facts: RequestFacts, value: bool | None
) -> str:
    """What the leaf read from the request (its value comes from the node itself)."""
    address = facts.client_ip
    ip = "no client address" if address is None else f"client IP {address}"
    verb = {True: "is in", False: "is not in", None: "may be in"}[value]
    if isinstance(node, c.IPIn):
        return f"{ip} {verb} {spec['ip']}"
    if isinstance(node, c.IPInSet):
        return f"{ip} {verb} the IP set {node.name!r}"
    if isinstance(node, c.IPInList):
        return f"{ip} {verb} the IP list key {node.ref.key!r}"
    if isinstance(node, c.IPKey):
        return f"{ip}, looked up as a key (OpenResty layout)"
    if isinstance(node, c.Percent):
        key = node.read(facts)
        if not key:
            return f"no value for {spec.get('by', 'ip')} to bucket by"
        share = node.threshold * 100 / BUCKETS
        return (
            f"{spec.get('by', 'ip')} {key!r} is in bucket {bucket(node.salt, key)} of {BUCKETS}; "
            f"buckets below {node.threshold} ({share:g}%) match"
        )
    for source in ("header", "cookie", "query"):
        if source in spec and isinstance(node, (c.ValueInSet, c.ValueEquals, c.ValueOneOf,
                                                c.ValueMatches, c.ValuePresent)):  # fmt: skip
            found = node.read(facts)
            read = f"{source} {spec[source]} is {_shown(found)}"
            if isinstance(node, c.ValueInSet) and found:
                return f"{read}, {verb} the set {node.ref.name!r}"
            return read
    if isinstance(node, c.Host):
        return f"host is {facts.host!r}"
    if isinstance(node, (c.PathPrefix, c.PathMatches)):
        return f"path is {facts.path!r}"
    if isinstance(node, c.Method):
        return f"method is {facts.method}"
    return type(node).__name__


def trace_condition(
    node: c.Node, spec: Mapping[str, Any], facts: RequestFacts, snapshot: Snapshot,
    answers: Answers,
) -> ConditionTrace:  # fmt: skip
    """The value of ``node`` and of every node under it, with what each read."""
    value = node.evaluate(facts, snapshot, answers, None)
    if isinstance(node, (c.All, c.Any)):
        kind = "all" if isinstance(node, c.All) else "any"
        children = tuple(
            trace_condition(child, child_spec, facts, snapshot, answers)
            for child, child_spec in zip(node.children, spec[kind], strict=True)
        )
        counts = [_value_name(child.value) for child in children]
        why = ", ".join(f"{counts.count(name)} {name}" for name in ("true", "false", "unknown")
                        if name in counts)  # fmt: skip
        return ConditionTrace(spec, value, f"{kind} of {len(children)}: {why}", children)
    if isinstance(node, c.Not):
        child = trace_condition(node.child, spec["not"], facts, snapshot, answers)
        return ConditionTrace(spec, value, f"not {_value_name(child.value)}", (child,))
    why = _leaf_why(node, spec, facts, value)
    if value is None:
        why += ": unknown, the store's answer is not available (such a request stays on stable)"
    return ConditionTrace(spec, value, why)


def _rule_traces(
    rules: tuple[Rule, ...], decided: Decision, facts: RequestFacts, snapshot: Snapshot,
    answers: Answers,
) -> tuple[RuleTrace, ...]:  # fmt: skip
    by_rules = decided.reason in ("rule", "unknown", "no-match")
    traces, reached = [], by_rules
    for rule in rules:
        if not rule.enabled:
            traces.append(RuleTrace(rule.id, rule.target, "disabled"))
            continue
        if not reached:
            traces.append(RuleTrace(rule.id, rule.target, "not reached"))
            continue
        condition = trace_condition(rule.condition, rule.spec["when"], facts, snapshot, answers)
        outcome = {True: "matched", False: "no match", None: "unknown"}[condition.value]
        traces.append(RuleTrace(rule.id, rule.target, outcome, condition))
        if decided.rule_id == rule.id:
            reached = False
    return tuple(traces)


def _override_lines(facts: RequestFacts, overrides: Overrides) -> tuple[str, ...]:
    lines = []
    if overrides.header is not None:
        lines.append(f"force header {overrides.header}: {_shown(facts.header(overrides.header))}")
    if overrides.cookie is not None:
        lines.append(f"force cookie {overrides.cookie}: {_shown(facts.cookie(overrides.cookie))}")
    return tuple(lines)


def explain_decision(
    facts: RequestFacts,
    snapshot: Snapshot,
    answers: Answers,
    *,
    overrides: Overrides = NO_OVERRIDES,
    upstreams: Mapping[str, Upstream] | None = None,
) -> Explanation:
    """Decide ``facts`` as a router with these ``overrides`` and own ``upstreams`` would
    (store upstreams and shared health from ``snapshot``), and say why."""
    ruled = decide(facts, snapshot, answers, overrides)
    decision, upstream = Targets(upstreams or {}, None).resolve(
        ruled, snapshot, facts.host, snapshot.ejected
    )
    return Explanation(
        decision=decision,
        ruled=ruled,
        upstream=None if upstream is None else str(upstream.url),
        mode=snapshot.mode,
        overrides=_override_lines(facts, overrides),
        rules=_rule_traces(snapshot.ruleset.rules, ruled, facts, snapshot, answers),
        version=snapshot.version,
    )
