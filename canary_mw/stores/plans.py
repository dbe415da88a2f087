"""Every change to the store, written once as a plan: a generator that yields command lists
and receives their results. The blocking and the asyncio store run the same plans, so their
validation, retries and audit records cannot differ.

Config changes (mode, rules, upstreams) are read-modify-write: the write only succeeds if
the version is still the one read, else the plan reads again (optimistic concurrency), so
concurrent writers never lose each other's changes. Set changes are single atomic commands.
Every change bumps the version, appends an audit entry and is announced on the channel in
the same atomic step; a write that changes nothing (the same mode again, an address already
in the set) does none of these: config plans compare before writing, set changes are
``counted`` by the change itself (Layout.change).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from ..errors import ConfigurationError, RuleError, StoreError
from ..ipmatch import parse_network
from ..rules import DEFAULT_RULES, RuleSet, parse_rules, valid_name
from ..shadow.config import parse_mirror
from ..snapshot import MODES
from ..upstreams import parse_upstream_document
from .layout import Command, Layout

__all__ = ["AuditEntry", "Change", "Plan", "StoredConfig"]

T = TypeVar("T")
Plan = Generator[list[Command], list[object], T]

#: Optimistic retries before a config change gives up (only under heavy concurrent writes).
ATTEMPTS = 50
#: Members per atomic set change (Lua's unpack() limit is ~8000 arguments).
CHUNK = 5000
CONFIG_FIELDS = ("mode", "rules", "upstreams", "mirror")
#: Every config snapshot in the audit log has these (``mirror`` only once one was set).
_ALWAYS_DESCRIBED = frozenset(CONFIG_FIELDS[:3])


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _checked(result: object) -> object:
    if isinstance(result, Exception):
        raise StoreError(f"Redis refused the command: {result}")
    return result


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """The config hash as stored (raw strings); a field is None when not set."""

    mode: str | None
    rules: str | None
    version: int
    upstreams: str | None = None
    mirror: str | None = None

    @classmethod
    def parse(cls, result: object) -> StoredConfig:
        raw = _checked(result)
        if not isinstance(raw, dict):
            raise StoreError(f"unexpected config reply {raw!r}")
        fields = {_text(key): _text(value) for key, value in raw.items()}
        try:
            version = int(fields.get("version", "0"))
        except ValueError:
            raise StoreError(
                f"the config's version field is not a number ({fields['version']!r}); "
                "fix it with: redis-cli HSET <prefix>config version 0"
            ) from None
        return cls(
            fields.get("mode"), fields.get("rules"), version, fields.get("upstreams"),
            fields.get("mirror"),
        )  # fmt: skip

    def fields(self) -> dict[str, str | None]:
        return {"mode": self.mode, "rules": self.rules, "upstreams": self.upstreams,
                "mirror": self.mirror}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """JSON-friendly view for the audit log: documents decoded where they parse."""
        view: dict[str, Any] = {"mode": self.mode}
        for name in ("rules", "upstreams", "mirror"):
            raw = getattr(self, name)
            if name == "mirror" and raw is None:
                continue  # entries from before mirroring existed look the same as they did
            try:
                view[name] = None if raw is None else json.loads(raw)
            except ValueError:
                view[name] = raw
        return view


@dataclass(frozen=True, slots=True)
class Change:
    """What a write did: the version after it, and before/after for config changes."""

    version: int
    changed: bool
    action: str
    target: str | None = None
    before: Any = None
    after: Any = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    version: int
    time: str
    actor: str
    action: str
    target: str | None
    before: Any
    after: Any
    detail: Any

    @property
    def is_config(self) -> bool:
        """True for changes that carry whole config snapshots (rollback can use them)."""
        return isinstance(self.after, dict) and set(self.after) >= _ALWAYS_DESCRIBED

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "version": self.version, "time": self.time, "actor": self.actor,
            "action": self.action, "target": self.target, "before": self.before,
            "after": self.after, "detail": self.detail,
        }  # fmt: skip


def _audit(
    actor: str, action: str, target: str | None, before: Any, after: Any, detail: Any = None
) -> dict[str, str]:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "actor": actor,
        "action": action,
        "target": target or "",
        "before": json.dumps(before, separators=(",", ":")),
        "after": json.dumps(after, separators=(",", ":")),
        "detail": json.dumps(detail, separators=(",", ":")),
    }


def _committed(result: object) -> int | None:
    """The new version from a CHANGE reply, or None when the version had moved on."""
    _checked(result)
    if result is None:
        return None
    version = result[0]  # type: ignore[index]
    return int(version)


def _check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise ConfigurationError("actor must name who makes the change, e.g. 'alice@laptop'")
    return actor.strip()[:200]


# -- config changes ------------------------------------------------------------------------
def config_change(
    layout: Layout,
    actor: str,
    action: str,
    target: str | None,
    mutate: Callable[[StoredConfig], dict[str, str | None]],
) -> Plan[Change]:
    """Read the config, apply ``mutate`` (which validates and may raise: nothing is written
    then), and write it back only if nobody changed it meanwhile; else start over."""
    actor = _check_actor(actor)
    for _ in range(ATTEMPTS):
        (result,) = yield layout.get_config()
        before = StoredConfig.parse(result)
        fields = mutate(before)
        after = StoredConfig(
            fields["mode"], fields["rules"], before.version + 1, fields["upstreams"],
            fields.get("mirror"),
        )  # fmt: skip
        if after.fields() == before.fields():
            return Change(before.version, False, action, target)
        commands: list[tuple[str | int, ...]] = []
        for name, value in fields.items():
            if value != before.fields()[name]:
                commands.append(
                    ("HDEL", layout.config, name) if value is None
                    else ("HSET", layout.config, name, value)
                )  # fmt: skip
        audit = _audit(actor, action, target, before.describe(), after.describe())
        change = layout.change(
            expected_version=before.version, commands=commands, keys=[],
            audit=audit, what=action, name=target,
        )  # fmt: skip
        (reply,) = yield [change]
        version = _committed(reply)
        if version is not None:
            return Change(version, True, action, target, before.describe(), after.describe())
    raise StoreError(f"the config changed {ATTEMPTS} times while we tried to write; try again")


def _replace(config: StoredConfig, **values: str | None) -> dict[str, str | None]:
    return {**config.fields(), **values}


def set_mode(layout: Layout, actor: str, mode: str) -> Plan[Change]:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {list(MODES)}, got {mode!r}")

    def mutate(config: StoredConfig) -> dict[str, str | None]:
        # No mode field means "rules": writing "rules" there would change nothing in force.
        return config.fields() if (config.mode or "rules") == mode else _replace(config, mode=mode)

    return config_change(layout, actor, "mode", mode, mutate)


def set_rules(layout: Layout, actor: str, rules: RuleSet) -> Plan[Change]:
    text = rules.to_json()
    return config_change(layout, actor, "rules import", None, lambda c: _replace(c, rules=text))


def clear_rules(layout: Layout, actor: str) -> Plan[Change]:
    return config_change(layout, actor, "rules clear", None, lambda c: _replace(c, rules=None))


def _current_rules(config: StoredConfig) -> list[dict[str, Any]]:
    if config.rules is None:
        # Editing starts from the defaults in force, so adding a rule keeps ips/users working.
        return [dict(rule.spec) for rule in DEFAULT_RULES.rules]
    try:
        return [dict(rule.spec) for rule in parse_rules(config.rules).rules]
    except RuleError as exc:
        raise ConfigurationError(
            f"the stored rules are invalid ({exc}); import a valid document first"
        ) from None


def _with_rules(config: StoredConfig, rules: list[dict[str, Any]]) -> dict[str, str | None]:
    return _replace(config, rules=parse_rules({"rules": rules}).to_json())  # validates


def add_rule(
    layout: Layout, actor: str, rule: Mapping[str, Any], position: int | None = None
) -> Plan[Change]:
    rule_id = rule.get("id") if isinstance(rule, Mapping) else None
    if not valid_name(rule_id):
        # Checked here so the message names the id given, not the position the rule would
        # take in the document (which the user never saw).
        raise RuleError(
            f"{rule_id!r} is not a valid rule id: 1-64 of [A-Za-z0-9_.:-] starting with a "
            "letter or digit",
            field="id",
        )

    def mutate(config: StoredConfig) -> dict[str, str | None]:
        rules = _current_rules(config)
        if any(existing.get("id") == rule.get("id") for existing in rules):
            raise ConfigurationError(f"a rule with id {rule.get('id')!r} exists; remove it first")
        index = len(rules) if position is None else max(0, min(position, len(rules)))
        rules.insert(index, dict(rule))
        return _with_rules(config, rules)

    return config_change(layout, actor, "rule add", str(rule.get("id")), mutate)


def remove_rule(layout: Layout, actor: str, rule_id: str) -> Plan[Change]:
    def mutate(config: StoredConfig) -> dict[str, str | None]:
        rules = _current_rules(config)
        kept = [rule for rule in rules if rule.get("id") != rule_id]
        if len(kept) == len(rules):
            raise ConfigurationError(f"no rule with id {rule_id!r}")
        return _with_rules(config, kept)

    return config_change(layout, actor, "rule remove", rule_id, mutate)


def set_percent(
    layout: Layout,
    actor: str,
    percent: float,
    *,
    rule_id: str = "percent",
    by: str | None = None,
    salt: str | None = None,
    target: str = "canary",
) -> Plan[Change]:
    """Set the sticky percentage of rule ``rule_id`` (created at the end if missing). Keeping
    the salt is what keeps everyone who was in still in when the percentage grows."""

    def mutate(config: StoredConfig) -> dict[str, str | None]:
        rules = _current_rules(config)
        for rule in rules:
            if rule.get("id") == rule_id:
                when = dict(rule.get("when", {}))
                if "percent" not in when:
                    raise ConfigurationError(f"rule {rule_id!r} is not a percentage rule")
                when["percent"] = percent
                if by is not None:
                    when["by"] = by
                if salt is not None:
                    when["salt"] = salt
                rule["when"] = when
                break
        else:
            when = {"percent": percent, "by": by or "ip", "salt": salt or rule_id}
            rules.append({"id": rule_id, "when": when, "target": target})
        return _with_rules(config, rules)

    return config_change(layout, actor, "percent", rule_id, mutate)


def set_upstream(
    layout: Layout, actor: str, name: str, url: str, host: str | None = None
) -> Plan[Change]:
    def mutate(config: StoredConfig) -> dict[str, str | None]:
        document = json.loads(config.upstreams) if config.upstreams else {}
        spec = document.setdefault(name, {})
        if host:
            spec.setdefault("hosts", {})[host.lower()] = url
        else:
            spec["url"] = url
        parse_upstream_document(document)  # validates; raises ConfigurationError
        return _replace(config, upstreams=json.dumps(document, separators=(",", ":")))

    return config_change(layout, actor, "upstream set", f"{name}@{host}" if host else name, mutate)


def remove_upstream(layout: Layout, actor: str, name: str, host: str | None = None) -> Plan[Change]:
    def mutate(config: StoredConfig) -> dict[str, str | None]:
        document = json.loads(config.upstreams) if config.upstreams else {}
        spec = document.get(name)
        if spec is None or (host and host.lower() not in spec.get("hosts", {})):
            raise ConfigurationError(
                f"no upstream {name!r}" + (f" for host {host!r}" if host else "")
            )
        if host:
            del spec["hosts"][host.lower()]
            if not spec["hosts"]:
                del spec["hosts"]
        if not host or not spec:
            del document[name]
        text = json.dumps(document, separators=(",", ":")) if document else None
        return _replace(config, upstreams=text)

    return config_change(
        layout, actor, "upstream remove", f"{name}@{host}" if host else name, mutate
    )


def set_mirror(layout: Layout, actor: str, document: object) -> Plan[Change]:
    """Store a mirror document (canary_mw.shadow), validated first: nothing is written when
    it is invalid."""
    text = parse_mirror(document).document
    return config_change(layout, actor, "mirror set", None, lambda c: _replace(c, mirror=text))


def clear_mirror(layout: Layout, actor: str) -> Plan[Change]:
    return config_change(layout, actor, "mirror off", None, lambda c: _replace(c, mirror=None))


# -- set changes ---------------------------------------------------------------------------
def _values(members: Iterable[str] | str) -> list[str]:
    values = [members] if isinstance(members, str) else list(members)
    if not values:
        raise ConfigurationError("give at least one member")
    for value in values:
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"members are non-empty strings, got {value!r}")
    return values


def normalize_ips(ips: Iterable[str] | str) -> list[str]:
    """Validated addresses / CIDRs; a single host is kept as the plain address."""
    members = []
    for ip in _values(ips):
        try:
            network = parse_network(ip)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        single = network.prefixlen == network.max_prefixlen
        members.append(str(network.network_address) if single else str(network))
    return members


def change_members(
    layout: Layout, actor: str, action: str, name: str, command: str, members: Iterable[str] | str
) -> Plan[Change]:
    """SADD / SREM in atomic, audited chunks; ``count`` is how many members changed."""
    actor = _check_actor(actor)
    values = _values(members)
    if not valid_name(name):
        raise ConfigurationError(f"set names are 1-64 of [A-Za-z0-9_.:-], got {name!r}")
    key = layout.set_key(name)
    version, changed = 0, 0
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        detail = {"set": name, "members": chunk[:100], "count": len(chunk)}
        audit = _audit(actor, action, name, None, None, detail)
        change = layout.change(
            expected_version=None, commands=[(command, key, *chunk)], keys=[key],
            audit=audit, what="set", name=name, counted=True,
        )  # fmt: skip
        (reply,) = yield [change]
        version = _committed(reply) or version
        changed += int(reply[1][0])  # type: ignore[index]
    return Change(version, changed > 0, action, name, count=changed)


# -- history and rollback ------------------------------------------------------------------
def _entry(entry_id: object, raw: Mapping[Any, Any]) -> AuditEntry:
    fields = {_text(key): _text(value) for key, value in raw.items()}

    def decoded(name: str) -> Any:
        try:
            return json.loads(fields.get(name, "null"))
        except ValueError:
            return fields.get(name)

    detail = decoded("detail")
    if isinstance(detail, dict) and "changed" in fields:
        # A set change's entry counts what the store actually changed (members already
        # there are not), not how many members were asked for.
        detail["count"] = int(fields["changed"])
    return AuditEntry(
        _text(entry_id), int(fields.get("version", "0")), fields.get("time", ""),
        fields.get("actor", ""), fields.get("action", ""), fields.get("target") or None,
        decoded("before"), decoded("after"), detail,
    )  # fmt: skip


def parse_history(result: object) -> list[AuditEntry]:
    """XREVRANGE reply (newest first) → entries."""
    raw = _checked(result)
    entries = []
    for item in raw or ():  # type: ignore[attr-defined]
        entry_id, fields = item
        if isinstance(fields, (list, tuple)):  # RESP2 without a response callback
            fields = dict(zip(fields[::2], fields[1::2], strict=False))
        entries.append(_entry(entry_id, fields))
    return entries


def history(layout: Layout, count: int) -> Plan[list[AuditEntry]]:
    if not isinstance(count, int) or count < 1:
        raise ConfigurationError(f"count must be a positive integer, got {count!r}")
    (result,) = yield layout.history(count)
    return parse_history(result)


def _restorable(entries: Sequence[AuditEntry], version: int | None) -> dict[str, Any]:
    configs = [entry for entry in entries if entry.is_config]
    if version is None:
        if not configs:
            raise ConfigurationError("no config change in the history to roll back")
        before: dict[str, Any] = configs[0].before
        return before
    latest = entries[0].version if entries else 0
    if version > latest:
        raise ConfigurationError(f"version {version} does not exist yet (latest is {latest})")
    if version < 0:
        raise ConfigurationError("versions are counted from 0")
    for entry in configs:  # newest first: the last config change at or before `version`
        if entry.version <= version:
            after: dict[str, Any] = entry.after
            return after
    oldest = entries[-1].version if entries else None
    if oldest is None or oldest <= 1:
        return {"mode": None, "rules": None, "upstreams": None}  # the empty initial config
    raise ConfigurationError(f"version {version} is older than the audit history (from {oldest})")


def _raw(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def rollback(layout: Layout, actor: str, version: int | None) -> Plan[Change]:
    """Restore the config (mode, rules, upstreams, mirror) as it was right after ``version``;
    without a version, undo the latest config change. Set memberships are data, not config: their
    changes are in the history but rollback leaves them as they are."""
    (result,) = yield layout.history(AUDIT_READ)
    entries = parse_history(result)
    snapshot = _restorable(entries, version)

    def mutate(config: StoredConfig) -> dict[str, str | None]:
        restored = {name: _raw(snapshot.get(name)) for name in CONFIG_FIELDS}
        if restored["mode"] is not None and restored["mode"] not in MODES:
            raise ConfigurationError(f"the history holds an invalid mode {restored['mode']!r}")
        if restored["rules"] is not None:
            parse_rules(restored["rules"])
        if restored["mirror"] is not None:
            restored["mirror"] = parse_mirror(restored["mirror"]).document
        return restored

    target = "previous" if version is None else str(version)
    return (yield from config_change(layout, actor, "rollback", target, mutate))


#: Entries rollback reads to find a version (the stream keeps about AUDIT_LENGTH).
AUDIT_READ = 10_000
