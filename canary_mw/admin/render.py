"""Human-readable output for the CLI (and the data behind ``--json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError, RuleError, StoreError
from ..rollout.render import lines_from_json, status_json
from ..rules import DEFAULT_RULES, RuleSet, parse_rules
from ..snapshot import MODES
from ..stores import AuditEntry, Change, Store
from ..upstreams import parse_upstream_document
from .backends import health_lines, health_view

__all__ = ["admin_banner", "change_line", "history_lines", "status_data", "status_lines"]


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
    if before.get("mirror") != after.get("mirror"):
        mirror = after.get("mirror")
        upstream = mirror.get("upstream") if isinstance(mirror, dict) else None
        diffs.append(f"mirror {'off' if mirror is None else f'on -> {upstream}'}")
    return diffs


def change_line(change: Change, what: str) -> str:
    """One line saying what a write did, e.g. ``mode: rules -> off (version 7)``."""
    if not change.changed:
        return f"{what}: nothing changed (version {change.version})"
    if change.count:
        return f"{what}: {change.count} changed (version {change.version})"
    diffs = _config_diffs(change.before or {}, change.after or {})
    return f"{what}: {', '.join(diffs) or 'done'} (version {change.version})"


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# What a router does with invalid data, said once for status and the docs: each router keeps
# the last valid value it read; one started while the value is invalid has none to keep.
def _problem(what: str, problem: str, in_force: str, fix: str) -> dict[str, str]:
    return {"what": what, "problem": problem, "in_force": in_force, "fix": fix}


def _config_view(raw: Mapping[str, str], prefix: str, problems: list[dict[str, str]]) -> Any:
    """Mode, rules, upstreams and version as routers read them, each checked like they do."""
    key = f"{prefix}config"
    mode_raw = raw.get("mode")
    mode = "rules" if mode_raw is None else mode_raw.strip().lower()
    if mode not in MODES:
        problems.append(_problem(
            f"{key} mode", f"{mode_raw!r} is not one of {'|'.join(MODES)}",
            "routers keep the mode they last read as valid; a router started since uses 'rules'",
            "canary-mw mode rules (or off / all)",
        ))  # fmt: skip
    ruleset: RuleSet | None = DEFAULT_RULES
    rules_problem = None
    if raw.get("rules") is not None:
        try:
            ruleset = parse_rules(raw["rules"])
        except RuleError as exc:
            ruleset, rules_problem = None, str(exc)
            problems.append(_problem(
                f"{key} rules", rules_problem,
                "routers keep the rules they last read as valid; a router started since uses "
                "its default rules",
                "canary-mw rules import FILE, or canary-mw rollback",
            ))  # fmt: skip
    upstreams: Any = {}
    if raw.get("upstreams") is not None:
        try:
            upstreams = json.loads(raw["upstreams"])
            parse_upstream_document(upstreams)
        except (ValueError, ConfigurationError) as exc:
            upstreams = {}
            problems.append(_problem(
                f"{key} upstreams", str(exc),
                "routers keep the upstreams they last read as valid; a router started since "
                "uses its own configuration",
                "canary-mw upstream set NAME URL, or canary-mw rollback",
            ))  # fmt: skip
    try:
        version: int | None = int(raw.get("version", "0"))
    except ValueError:
        version = None
        problems.append(_problem(
            f"{key} version", f"{raw['version']!r} is not an integer",
            "routers keep routing; canary-mw refuses to write until it is fixed",
            f"redis-cli HSET {key} version 0",
        ))  # fmt: skip
    return mode_raw, ruleset, rules_problem, upstreams, version


def _ip_list_problems(
    store: Store, ruleset: RuleSet | None, problems: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """The classic white-list keys the rules refer to, each checked as routers check it."""
    refs = sorted(ruleset.ip_lists, key=lambda ref: (ref.db or 0, ref.key)) if ruleset else []
    if not refs:
        return []
    state = store.read_state((), refs)
    lists = []
    for ref in refs:
        raw = state.ip_lists.get(ref)
        what = f"IP list key {ref.key!r} (db {ref.db or 0})"
        problem, size = None, 0
        if isinstance(raw, Exception):
            problem = str(raw)
        elif raw is not None:
            try:
                entries = json.loads(raw)
            except ValueError as exc:
                problem = f"not JSON: {exc}"
            else:
                if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                    problem = "expected a JSON list of IP strings"
                else:
                    size = len(entries)
        if problem:
            problems.append(_problem(
                what, problem,
                "routers keep the list they last read as valid; a router started since has "
                "none, so conditions on it are unknown and those requests go to stable",
                f"""redis-cli -n {ref.db or 0} SET {ref.key} '["203.0.113.7"]'""",
            ))  # fmt: skip
        lists.append({"key": ref.key, "db": ref.db or 0, "entries": size, "problem": problem})
    return lists


def status_data(store: Store) -> dict[str, Any]:
    """What the store holds, checked the way routers check it: invalid data is reported in
    ``problems`` (what, what is wrong, what is in force, how to fix it), never raised, since
    routers keep working through it (only an unreachable store raises StoreError)."""
    problems: list[dict[str, str]] = []
    state = store.read_state((), ())
    raw: dict[str, str] = {}
    if isinstance(state.config, Exception):
        problems.append(_problem(
            f"{store.prefix}config", f"cannot be read as a hash: {state.config}",
            "routers keep the mode, rules and upstreams they last read; a router started since "
            "uses mode 'rules', its default rules and its own upstreams",
            f"redis-cli DEL {store.prefix}config, then set the mode / rules again "
            "(canary-mw history shows them)",
        ))  # fmt: skip
    else:
        raw = {_text(key): _text(value) for key, value in state.config.items()}
    mode_raw, ruleset, rules_problem, upstreams, version = _config_view(raw, store.prefix, problems)
    rules = [] if ruleset is None else [
        {"id": r.id, "when": r.spec["when"], "target": r.target, "enabled": r.enabled,
         **({"description": r.spec["description"]} if r.spec.get("description") else {})}
        for r in ruleset.rules
    ]  # fmt: skip
    ip_lists = _ip_list_problems(store, ruleset, problems)
    mode = "rules" if mode_raw is None else mode_raw.strip().lower()
    mode_valid = mode in MODES
    if not mode_valid:
        mode = str(mode_raw)
    sets = {"ips", "users"} | (set(ruleset.ip_sets) if ruleset else set())
    for rule in ruleset.rules if ruleset else ():
        _collect_sets(rule.spec["when"], sets)
    raw_health: Mapping[bytes, bytes] = {}
    if isinstance(state.health, Exception):
        problems.append(_problem(f"{store.prefix}health", str(state.health),
                                 "routers keep the health they last read until it lapses",
                                 f"redis-cli DEL {store.prefix}health"))  # fmt: skip
    else:
        raw_health = state.health
    health = health_view(raw_health, upstreams)
    traffic: dict[str, int] = {}
    try:
        traffic = {name: int(value) for name, value in store.traffic().items()}
    except (StoreError, ValueError) as exc:
        problems.append(_problem(f"{store.prefix}traffic", str(exc), "routing is not affected",
                                 f"redis-cli DEL {store.prefix}traffic"))  # fmt: skip
    set_sizes: dict[str, int | None] = {}
    for name in sorted(sets):
        try:
            set_sizes.update(store.set_sizes([name]))
        except StoreError as exc:
            set_sizes[name] = None
            problems.append(_problem(
                f"{store.prefix}set:{name}", str(exc),
                "routers keep the members they last read; lookups in it are unknown (stable)",
                f"redis-cli DEL {store.prefix}set:{name}, then canary-mw ip/user add",
            ))  # fmt: skip
    mirror = _mirror_view(raw.get("mirror"), store.prefix, problems)
    try:
        rollout = status_json(store.rollout_status())
    except (StoreError, ConfigurationError) as exc:
        rollout = {"rollout": None, "windows": {}}
        problems.append(_problem(f"{store.prefix}config rollout", str(exc), "no rollout is driven",
                                 f"redis-cli HDEL {store.prefix}config rollout"))  # fmt: skip
    return {
        "mirror": mirror,
        "rollout": rollout,
        "store": store.url,
        "prefix": store.prefix,
        "version": version,
        "mode": mode,
        "mode_valid": mode_valid,
        "rules_source": "store" if raw.get("rules") is not None else "defaults",
        "rules_problem": rules_problem,
        "rules": rules,
        "upstreams": upstreams,
        "ip_lists": ip_lists,
        "health": health,
        "sets": set_sizes,
        "traffic": traffic,
        "problems": problems,
    }


def _mirror_view(raw: Any, prefix: str, problems: list[dict[str, str]]) -> Any:
    """The stored mirror document (docs/shadow.md), None when off, or as stored when invalid
    (with a problem saying so)."""
    if raw is None:
        return None
    from ..shadow.config import parse_mirror  # noqa: PLC0415 - only when a mirror is stored

    try:
        return json.loads(parse_mirror(raw).document)
    except ConfigurationError as exc:
        in_force = "routers keep the last valid mirror; one started since has none"
        fix = "canary-mw mirror set URL ... (or canary-mw mirror off)"
        problems.append(_problem(f"{prefix}config mirror", str(exc), in_force, fix))
        return raw


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
    if data["version"] is None:
        lines[1] = "version  INVALID (see problems)"
    if not data["mode_valid"]:
        lines[2] = f"mode     {data['mode']!r}  INVALID (see problems)"
    if data["rules_problem"]:
        lines.append("  INVALID in the store (see problems)")
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
    lines += health_lines(data["health"])
    for item in data["ip_lists"]:
        state = "INVALID (see problems)" if item["problem"] else f"{item['entries']} entries"
        lines.append(f"ip list  {item['key']} (db {item['db']}): {state}")
    lines.append(
        "sets     "
        + ", ".join(f"{n} {'INVALID' if c is None else c}" for n, c in sorted(data["sets"].items()))
    )
    total = sum(data["traffic"].values())
    if total:
        shares = ", ".join(
            f"{target} {count} ({count / total:.1%})"
            for target, count in sorted(data["traffic"].items())
        )
        lines.append(f"traffic  {shares}  (all instances, since the counters were created)")
    else:
        lines.append("traffic  (none reported yet)")
    mirror = data.get("mirror")
    if isinstance(mirror, Mapping):
        methods = ", ".join(mirror.get("methods", ["GET", "HEAD"]))
        lines.append(f"mirror   on -> {mirror['upstream']} ({methods}; "
                     f"{mirror.get('percent', 100):g}%; canary-mw mirror report)")  # fmt: skip
    elif mirror is not None:
        lines.append("mirror   INVALID (see problems)")
    rollout = lines_from_json(data.get("rollout") or {})
    if rollout:
        lines.append(f"rollout  {rollout[0].removeprefix('rollout ')}")
        lines += [f"  {line}" for line in rollout[1:]]
    if data["problems"]:
        lines.append("problems (invalid data in the store; routers keep routing)")
        for problem in data["problems"]:
            lines += [
                f"  {problem['what']}: {problem['problem']}",
                f"    in force: {problem['in_force']}",
                f"    fix: {problem['fix']}",
            ]
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


def _without_password(url: str) -> str:
    """The URL with any password masked: the banner ends up in terminals and service logs."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def admin_banner(store: Store, address: tuple[str, int], *, auth: bool) -> list[str]:
    """What ``canary-mw admin`` prints once it listens: where, whether auth is on, the docs."""
    host, port = address
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        where = f"http://{shown}:{port} (every interface; from here: http://127.0.0.1:{port})"
        base = f"http://127.0.0.1:{port}"
    else:
        where = base = f"http://{shown}:{port}"
    return [
        f"canary-mw admin API on {where}",
        f"  store    {_without_password(store.url)} (prefix {store.prefix!r})",
        "  auth     " + (
            "bearer token required (Authorization: Bearer <token>)" if auth
            else "OFF (--insecure-no-auth): loopback clients only"
        ),
        f"  console  {base}/ (the page for operators: sign in with the token)" if auth
        else f"  console  {base}/ (the page for operators; any token signs in)",
        f"  OpenAPI  {base}/openapi.json (request bodies: docs/admin-api.md)",
        "  Ctrl-C stops it.",
    ]  # fmt: skip
