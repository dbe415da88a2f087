"""Rollouts in the store: the record, the lease, fenced transitions and telemetry windows,
as plans (generators of command lists, like stores/plans.py) that either store runs with
``store._run``. Two Lua scripts, which the memory backend interprets natively:

* LEASE_SCRIPT: keep or take the controller lease. The value is ``<token>:<holder>``, the
  token drawn from a counter, so each tenure is unique and a holder that lost the lease
  (and a later tenure of its own) can never be mistaken for the current one.
* FENCED_CHANGE_SCRIPT: a config change (like CANARY.CHANGE: version check, write, bump,
  audit, announce) that first checks the lease still holds the writer's value. A paused
  leader that wakes up after losing the lease writes nothing.

Keys (default prefix): ``canary:rollout:lease`` (string, PX the lease time),
``canary:rollout:token`` (counter), ``canary:window:<target>:<n>`` (hash: requests, errors,
``b0``..``b14`` latency buckets, for the n-th interval since the epoch; expires by TTL).
The record itself is the config hash's ``rollout`` field (JSON).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ..errors import ConfigurationError, StoreError
from ..outcome import STABLE
from ..stores import plans as store_plans
from ..stores.layout import AUDIT_LENGTH, Command, Layout
from ..stores.memory import NATIVE_SCRIPTS, CommandError, MemoryBackend
from ..stores.plans import Change, Plan, StoredConfig, _text
from .judge import Window
from .plan import RULE_ID, Rollout, Transition

__all__ = [
    "FENCED_CHANGE_SCRIPT",
    "LEASE_SCRIPT",
    "LeaseLostError",
    "StaleRecordError",
    "fold_windows",
    "lease",
    "read_rollout",
    "read_windows",
    "step_windows",
    "write_transition",
]

#: Seconds a telemetry window is kept (the judge reads at most this far back).
WINDOW_TTL = 3600

LEASE_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held and held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return held
end
if held then return held end
local value = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
return value
"""

FENCED_CHANGE_SCRIPT = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('FENCED the rollout lease is no longer held by this writer')
end
local current = redis.call('HGET', KEYS[1], 'version')
if current and not string.match(current, '^%-?%d+$') then
  return redis.error_reply('ERR hash value is not an integer')
end
if (tonumber(current) or 0) ~= tonumber(ARGV[1]) then return false end
for _, pair in ipairs(cjson.decode(ARGV[3])) do
  if pair[2] == cjson.null then
    redis.call('HDEL', KEYS[1], pair[1])
  else
    redis.call('HSET', KEYS[1], pair[1], pair[2])
  end
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'version', version,
  unpack(cjson.decode(ARGV[4])))
redis.call('PUBLISH', ARGV[6], ARGV[7])
return version
"""


class LeaseLostError(StoreError):
    """A fenced write was refused: another controller holds the lease now."""


class StaleRecordError(Exception):
    """The record moved on since the transition was decided (another writer was first)."""


def lease_key(layout: Layout) -> str:
    return layout.prefix + "rollout:lease"


def token_key(layout: Layout) -> str:
    return layout.prefix + "rollout:token"


def window_key(layout: Layout, target: str, index: int) -> str:
    return f"{layout.prefix}window:{target}:{index}"


def parse_record(config: Mapping[Any, Any]) -> Rollout | None:
    raw = config.get(b"rollout", config.get("rollout"))
    return None if raw is None else Rollout.loads(raw)


def read_rollout(layout: Layout) -> Plan[tuple[StoredConfig, Rollout | None]]:
    """The config and the rollout record (None when none was ever started); raises
    ConfigurationError when the record is not valid JSON of a rollout."""
    (result,) = yield layout.get_config()
    config = StoredConfig.parse(result)
    return config, parse_record(result)  # type: ignore[arg-type]


def lease(layout: Layout, held: str, holder: str, ttl: float) -> Plan[str]:
    """Renew ``held`` (our lease value, "" for none) or take the lease if it is free; the
    value in force afterwards (ours when it ends with ``:holder``)."""
    command = ("EVAL", LEASE_SCRIPT, 2, lease_key(layout), token_key(layout), held, holder,
               max(1, int(ttl * 1000)))  # fmt: skip
    (result,) = yield [(None, command)]
    return _text(store_plans._checked(result))


def _rules_with(config: StoredConfig, rule: Mapping[str, Any] | None) -> str:
    rules = [r for r in store_plans._current_rules(config) if r.get("id") != RULE_ID]
    if rule is not None:
        rules.append(dict(rule))
    fields = store_plans._with_rules(config, rules)
    return str(fields["rules"])


def rollout_rule(rollout: Rollout, percent: float) -> dict[str, Any]:
    plan = rollout.plan
    # The salt is the rollout's own: raising the percentage only adds buckets, and the next
    # rollout starts with a different first 1%.
    when = {"percent": percent, "by": plan.by, "salt": f"rollout-{rollout.id}"}
    return {"id": RULE_ID, "when": when, "target": plan.upstream}


def config_fields(config: StoredConfig, transition: Transition) -> dict[str, str | None]:
    """The routing config after ``transition`` (mode and rules only)."""
    rollout = transition.after
    if transition.config == "percent":
        # A kill switch stays on (a resume under it waits for a person to lift it).
        mode = config.mode if config.mode in (None, "rules", "off") else "rules"
        return {"mode": mode, "rules": _rules_with(config, rollout_rule(rollout, rollout.percent))}
    if transition.config == "restore":
        prior = rollout.prior
        rules: str | None = _rules_with(config, prior.get("rule"))
        if not prior.get("had_rules", True) and rules == _rules_with(
            StoredConfig(None, None, 0), None
        ):
            rules = None  # the defaults were in force, as no document: so again
        # A kill switch pulled during the rollout is a later decision than the mode before it.
        mode = "off" if config.mode == "off" else prior.get("mode")
        return {"mode": mode, "rules": rules}
    if transition.config == "promote":
        if rollout.plan.upstream == "canary":
            return {"mode": "all", "rules": config.rules}
        return {"mode": config.mode, "rules": _rules_with(config, rollout_rule(rollout, 100))}
    return {"mode": config.mode, "rules": config.rules}


def prior_of(config: StoredConfig) -> dict[str, Any]:
    """What a rollout restores: the mode and its rule as they are now."""
    rule = None
    if config.rules is not None:
        rule = next((r for r in store_plans._current_rules(config) if r.get("id") == RULE_ID), None)
    return {"mode": config.mode, "rule": rule, "had_rules": config.rules is not None}


def write_transition(
    layout: Layout,
    actor: str,
    transition: Transition,
    *,
    expected: Rollout | None,
    fence: str = "",
) -> Plan[Change]:
    """Write ``transition`` with its routing change, atomically, if the stored record is
    still ``expected`` (same id and generation; None: no active rollout) and, when
    ``fence`` is given, the lease still holds it. Raises StaleRecordError or LeaseLostError
    otherwise."""
    actor = store_plans._check_actor(actor)
    rollout = transition.after
    for _ in range(store_plans.ATTEMPTS):
        (result,) = yield layout.get_config()
        config = StoredConfig.parse(result)
        current = parse_record(result)  # type: ignore[arg-type]
        if expected is None:
            if current is not None and current.active:
                raise ConfigurationError(
                    f"rollout {current.id} is {current.status}: abort or finish it first"
                )
        elif current is None or (current.id, current.generation) != (
            expected.id, expected.generation,
        ):  # fmt: skip
            raise StaleRecordError(
                f"the rollout record moved on (expected generation {expected.generation})"
            )
        fields = config_fields(config, transition)
        changed = {name: value for name, value in fields.items() if value != getattr(config, name)}
        before_view = config.describe()
        after_config = replace(
            config, mode=fields["mode"], rules=fields["rules"], version=config.version + 1
        )
        detail = {"rollout": rollout.id, "status": rollout.status, **transition.detail}
        # Entries that change routing carry whole config snapshots, so `canary-mw rollback`
        # can undo them; the others carry the record's move only.
        if changed:
            audit = store_plans._audit(
                actor, transition.action, rollout.plan.upstream, before_view,
                after_config.describe(), detail,
            )  # fmt: skip
        else:
            audit = store_plans._audit(
                actor, transition.action, rollout.plan.upstream, None, None, detail
            )
        pairs = [[name, value] for name, value in changed.items()]
        pairs.append(["rollout", rollout.dumps()])
        message = json.dumps({"what": "rollout", "name": rollout.id}, separators=(",", ":"))
        audit_fields = [item for pair in audit.items() for item in pair]
        command = (
            "EVAL", FENCED_CHANGE_SCRIPT, 3, layout.config, layout.audit, lease_key(layout),
            config.version, fence, json.dumps(pairs), json.dumps(audit_fields), AUDIT_LENGTH,
            layout.channel, message,
        )  # fmt: skip
        (reply,) = yield [(None, command)]
        if isinstance(reply, Exception) and "FENCED" in str(reply):
            raise LeaseLostError(str(reply))
        store_plans._checked(reply)
        if reply is not None and reply is not False:
            after = after_config.describe() if changed else None
            return Change(int(reply), True, transition.action, rollout.id,  # type: ignore[call-overload]
                          before_view if changed else None, after)  # fmt: skip
    raise StoreError("the config kept changing while the rollout tried to write; try again")


# -- telemetry windows ---------------------------------------------------------------------
def fold_windows(
    layout: Layout, windows: Mapping[str, Window], index: int, ttl: int = WINDOW_TTL
) -> list[Command]:
    """One interval's counts per target, added to the shared window (one pipeline)."""
    commands: list[Command] = []
    for target, window in sorted(windows.items()):
        if not window.requests and not any(window.buckets):
            continue
        key = window_key(layout, target, index)
        commands.append((None, ("HINCRBY", key, "requests", window.requests)))
        if window.errors:
            commands.append((None, ("HINCRBY", key, "errors", window.errors)))
        for number, count in enumerate(window.buckets):
            if count:
                commands.append((None, ("HINCRBY", key, f"b{number}", count)))
        commands.append((None, ("EXPIRE", key, ttl)))
    return commands


def step_windows(
    layout: Layout, rollout: Rollout, now: float, size: int
) -> Plan[tuple[dict[str, Window], str]]:
    """What the judge compares for the current step: the canary's and stable's windows
    entirely inside the step (the one it began in mixes percentages), and where stable's come
    from: ``"step"``, or ``"rollout"`` when stable served too few in the step (at 100 % it
    serves almost nobody) and its baseline is what it served since the rollout began."""
    interval = rollout.plan.interval
    first = math.floor(rollout.step_started / interval) + 1
    last = math.floor(now / interval)
    targets = (rollout.plan.upstream, STABLE)
    windows = yield from read_windows(layout, targets, first, last, size)
    if windows[STABLE].requests >= rollout.plan.thresholds.min_requests:
        return windows, "step"
    since = math.floor(rollout.start_at / interval) + 1
    if since >= first:  # the first step: there is no earlier traffic
        return windows, "step"
    earlier = yield from read_windows(layout, (STABLE,), since, last, size)
    return {**windows, STABLE: earlier[STABLE]}, "rollout"


def _window(raw: object, size: int) -> Window:
    if not isinstance(raw, dict):
        return Window(buckets=(0,) * size)
    fields = {_text(k): _text(v) for k, v in raw.items()}

    def number(name: str) -> int:
        try:
            return max(0, int(fields.get(name, "0")))
        except ValueError:
            return 0  # garbage written by hand counts as nothing

    return Window(number("requests"), number("errors"), tuple(number(f"b{i}") for i in range(size)))


def read_windows(
    layout: Layout, targets: Iterable[str], first: int, last: int, size: int
) -> Plan[dict[str, Window]]:
    """Each target's windows ``first``..``last`` (inclusive) summed over every instance."""
    names = list(targets)
    indexes = range(first, last + 1)
    commands: list[Command] = [
        (None, ("HGETALL", window_key(layout, target, index)))
        for target in names
        for index in indexes
    ]
    results = (yield commands) if commands else []
    totals = {target: Window(buckets=(0,) * size) for target in names}
    for position, result in enumerate(results):
        target = names[position // len(indexes)]
        totals[target] = totals[target] + _window(result, size)
    return totals


# -- the scripts as the memory backend runs them (same steps, same order) -------------------
def _native_lease(
    backend: MemoryBackend, data: dict[bytes, Any], published: list[tuple[bytes, bytes]],
    keys: list[bytes], args: list[bytes],
) -> bytes:  # fmt: skip
    lease_at, counter = keys
    mine, holder, ttl = args
    held = backend._cmd_get(data, published, lease_at)
    if held is not None and held == mine:
        backend._cmd_pexpire(data, published, lease_at, ttl)
        return held
    if held is not None:
        return held
    value = b"%d:%s" % (backend._cmd_incr(data, published, counter), holder)
    backend._cmd_set(data, published, lease_at, value, b"PX", ttl)
    return value


def _native_fenced_change(
    backend: MemoryBackend, data: dict[bytes, Any], published: list[tuple[bytes, bytes]],
    keys: list[bytes], args: list[bytes],
) -> object:  # fmt: skip
    config, audit, lease_at = keys
    expected, fence, pairs, fields, maxlen, channel, message = args
    if fence and backend._cmd_get(data, published, lease_at) != fence:
        raise CommandError("FENCED the rollout lease is no longer held by this writer")
    current = backend._cmd_hgetall(data, published, config).get(b"version", b"0")
    try:
        version = int(current)
    except ValueError:
        raise CommandError("ERR hash value is not an integer") from None
    if version != int(expected):
        return None
    for name, value in json.loads(pairs):
        if value is None:
            backend._cmd_hdel(data, published, config, name.encode())
        else:
            backend._cmd_hset(data, published, config, name.encode(), value.encode())
    new = backend._cmd_hincrby(data, published, config, b"version", b"1")
    entry = [str(item).encode() for item in json.loads(fields)]
    backend._cmd_xadd(data, published, audit, b"MAXLEN", b"~", maxlen, b"*",
                      b"version", str(new).encode(), *entry)  # fmt: skip
    backend._cmd_publish(data, published, channel, message)
    return new


NATIVE_SCRIPTS[LEASE_SCRIPT.encode()] = _native_lease
NATIVE_SCRIPTS[FENCED_CHANGE_SCRIPT.encode()] = _native_fenced_change
