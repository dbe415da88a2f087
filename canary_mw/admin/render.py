"""Human-readable output for the CLI (and the data behind ``--json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..rules import DEFAULT_RULES, RuleSet, parse_rules
from ..stores import AuditEntry, Change, Store
from ..stores.changes import StoredConfig

__all__ = ["change_line", "history_lines", "status_data", "status_lines"]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


def _rules_by_id(document: Any) -> dict[str, Any]:
    if not isinstance(document, Mapping) or not isinstance(document.get("rules"), list):
        return {}
    return {str(rule.get("id")): rule for rule in document["rules"] if isinstance(rule, Mapping)}


def _rules_diff(before: Any, after: Any) -> str:
    """``+qa -old ~percent`` style summary of what changed between two rule documents (None
    stands for the default rules, which apply while no document is stored)."""
    old = _rules_by_id(before if before is not None else DEFAULT_RULES.to_document())
    new = _rules_by_id(after if after is not None else DEFAULT_RULES.to_document())
    parts = [f"+{rule_id}" for rule_id in new if rule_id not in old]
    parts += [f"-{rule_id}" for rule_id in old if rule_id not in new]
    parts += [f"~{rule_id}" for rule_id in new if rule_id in old and new[rule_id] != old[rule_id]]
    if not parts and list(old) != list(new):
        parts.append("reordered")
    summary = " ".join(parts) or "unchanged"
    if before is None:
        summary += " (were the defaults)"
    elif after is None:
        summary += " (now the defaults)"
    return summary


def _config_diffs(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    diffs = []
    if before.get("mode") != after.get("mode"):
        diffs.append(f"mode {before.get('mode') or 'rules'} -> {after.get('mode') or 'rules'}")
    if before.get("rules") != after.get("rules"):
        diffs.append(f"rules {_rules_diff(before.get('rules'), after.get('rules'))}")
    if before.get("upstreams") != after.get("upstreams"):
        diffs.append(f"upstreams {_compact(after.get('upstreams'))}")
    return diffs


def change_line(change: Change, what: str) -> str:
    """One line saying what a write did, e.g. ``mode: rules -> off (version 7)``."""
    if not change.changed:
        return f"{what}: nothing changed (version {change.version})"
    if change.count:
        return f"{what}: {change.count} changed (version {change.version})"
    diffs = _config_diffs(change.before or {}, change.after or {})
    return f"{what}: {', '.join(diffs) or 'done'} (version {change.version})"


def _ruleset(config: StoredConfig) -> tuple[RuleSet | None, str | None]:
    if config.rules is None:
        return DEFAULT_RULES, None
    try:
        return parse_rules(config.rules), None
    except Exception as exc:
        return None, str(exc)


def status_data(store: Store) -> dict[str, Any]:
    config = store.get_config()
    ruleset, problem = _ruleset(config)
    rules = [] if ruleset is None else [
        {"id": r.id, "when": r.spec["when"], "target": r.target, "enabled": r.enabled}
        for r in ruleset.rules
    ]  # fmt: skip
    sets = {"ips", "users"} | (set(ruleset.ip_sets) if ruleset else set())
    for rule in ruleset.rules if ruleset else ():
        _collect_sets(rule.spec["when"], sets)
    health = {}
    for name, raw in store.health().items():
        try:
            health[name] = json.loads(raw)
        except ValueError:
            health[name] = {"raw": raw}
    traffic = {name: int(value) for name, value in store.traffic().items()}
    return {
        "store": store.url,
        "prefix": store.prefix,
        "version": config.version,
        "mode": config.mode or "rules",
        "rules_source": "store" if config.rules is not None else "defaults",
        "rules_problem": problem,
        "rules": rules,
        "upstreams": config.describe()["upstreams"] or {},
        "health": health,
        "sets": store.set_sizes(sorted(sets)),
        "traffic": traffic,
    }


def _collect_sets(condition: Any, sets: set[str]) -> None:
    if isinstance(condition, Mapping):
        if isinstance(condition.get("in_set"), str):
            sets.add(condition["in_set"])
        if isinstance(condition.get("ip_in_set"), str):
            sets.add(condition["ip_in_set"])
        for child in condition.get("all", []) + condition.get("any", []):
            _collect_sets(child, sets)
        if "not" in condition:
            _collect_sets(condition["not"], sets)


def status_lines(data: Mapping[str, Any]) -> list[str]:
    lines = [
        f"store    {data['store']} (prefix {data['prefix']!r})",
        f"version  {data['version']}",
        f"mode     {data['mode']}" + {"off": "  (kill switch: everyone on stable)",
                                      "all": "  (everyone on the canary)"}.get(data["mode"], ""),
        f"rules    ({data['rules_source']})",
    ]  # fmt: skip
    if data["rules_problem"]:
        lines.append(
            f"  INVALID in the store, the last good rules are in force: {data['rules_problem']}"
        )
    for position, rule in enumerate(data["rules"], 1):
        flag = "" if rule["enabled"] else "  (disabled)"
        lines.append(
            f"  {position}. {rule['id']:<16} {_compact(rule['when'])} -> {rule['target']}{flag}"
        )
    lines.append("upstreams (set in the store; the routers' own configuration applies otherwise)")
    for name, spec in sorted(data["upstreams"].items()):
        lines.append(f"  {name}: {spec.get('url', '-')}")
        for host, url in sorted(spec.get("hosts", {}).items()):
            lines.append(f"    host {host}: {url}")
    if not data["upstreams"]:
        lines.append("  (none)")
    lines.append("health")
    for name, state in sorted(data["health"].items()):
        status = "healthy" if state.get("healthy", True) else "EJECTED"
        lines.append(f"  {name}: {status} ({state.get('reason', '')}, by {state.get('by', '?')})")
    if not data["health"]:
        lines.append("  (no checks reported)")
    lines.append("sets     " + ", ".join(f"{n} {c}" for n, c in sorted(data["sets"].items())))
    total = sum(data["traffic"].values())
    if total:
        shares = ", ".join(
            f"{target} {count} ({count / total:.1%})"
            for target, count in sorted(data["traffic"].items())
        )
        lines.append(f"traffic  {shares}  (all instances, since the counters were created)")
    else:
        lines.append("traffic  (none reported yet)")
    return lines


def history_lines(entries: list[AuditEntry]) -> list[str]:
    lines = []
    for entry in entries:
        target = f" {entry.target}" if entry.target else ""
        lines.append(f"v{entry.version:<5} {entry.time}  {entry.actor:<20} {entry.action}{target}")
        if entry.detail:
            lines.append(f"         {_compact(entry.detail)}")
        elif entry.is_config and isinstance(entry.before, dict):
            lines += [f"         {diff}" for diff in _config_diffs(entry.before, entry.after)]
    return lines
