"""The Redis key layout and the commands canary_mw sends, free of any I/O.

Every backend (memory, sync Redis, async Redis) runs these same command lists, so the
layout an operator sees with ``redis-cli`` is defined here and nowhere else:

=========================  =====  ==========================================================
key (default prefix)       type   meaning
=========================  =====  ==========================================================
``canary:config``          hash   ``mode`` (off|rules|all), ``rules`` (JSON), ``upstreams``
                                  (JSON), ``version`` (bumped by every change)
``canary:set:<name>``      set    members of a named set (IPs/CIDRs, user ids, ...)
``canary:audit``           stream one entry per change: time, actor, action, before, after
``canary:health``          hash   backend URL → JSON health record shared by all instances:
                                  ``healthy``, ``since``, ``until`` (ignored after it; writers
                                  renew it), ``reason``, ``by`` (see docs/health.md)
``canary:traffic``         hash   target → requests served, summed over all instances
``canary:shadow:counts``   hash   ``<route> <counter>`` → shadow copies counted, summed over
                                  all instances (sent, dropped, errors, matches, mismatches
                                  by kind; see docs/shadow.md)
``canary:shadow:samples``  list   the latest differing answers (JSON), at most SHADOW_SAMPLES
``canary:changes``         chan   pub/sub channel: one message per change made by canary_mw
``<ip>`` (any db)          str    classic OpenResty layout: value equal to the key → canary
``<key>`` (any db)         str    classic OpenResty white-list: a JSON list of IPs
=========================  =====  ==========================================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..keys import IPKeyRef, IPListRef, Probe, SetRef
from ..rules import valid_name

__all__ = [
    "AUDIT_LENGTH", "CHANGE", "CHANGE_SCRIPT", "SHADOW_SAMPLES", "Command", "Layout", "StoreState",
]  # fmt: skip

#: ``(db, args)``: db None is the store's own database.
Command = tuple[int | None, tuple[str | bytes | int, ...]]

#: The audit stream keeps about this many entries (XADD MAXLEN ~).
AUDIT_LENGTH = 10_000
#: The shadow report keeps this many sample differences (LTRIM).
SHADOW_SAMPLES = 50
#: Pseudo-command name for Layout.change; executors translate it.
CHANGE = "CANARY.CHANGE"
#: CHANGE as Redis runs it: all or nothing, in one round trip. Args after the name:
#: config key, audit key, expected version ("" = any), commands (JSON), audit fields (JSON
#: flat list), audit length, channel, message, keys (JSON), counted ("1" or ""). Returns false
#: on a version conflict, else {version, {command results}}. A corrupt version field fails the
#: script before it writes anything (Redis does not undo a script's writes on error).
#: "counted": the commands' integer replies say how many things they changed (SADD, SREM); when
#: they add up to 0 the change is a no-op, so the version is not bumped, nothing is recorded
#: and nothing announced, and the reply carries the version as it was. Config changes are not
#: counted (HSET replies 0 when it overwrites): their plan only sends a change that differs.
CHANGE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and not string.match(current, '^%-?%d+$') then
  return redis.error_reply('ERR hash value is not an integer')
end
if ARGV[1] ~= '' and (tonumber(current) or 0) ~= tonumber(ARGV[1]) then
  return false
end
local results, changed = {}, 0
for i, command in ipairs(cjson.decode(ARGV[2])) do
  results[i] = redis.call(unpack(command))
  if type(results[i]) == 'number' then changed = changed + results[i] end
end
local fields = cjson.decode(ARGV[3])
if ARGV[7] == '1' then
  if changed == 0 then
    return {tonumber(current) or 0, results}
  end
  table.insert(fields, 'changed')
  table.insert(fields, tostring(changed))
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'version', version, unpack(fields))
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {version, results}
"""


@dataclass(frozen=True, slots=True)
class StoreState:
    """Raw data read for one snapshot. A value that is an exception failed on its own
    (e.g. WRONGTYPE) while the rest of the read succeeded."""

    config: Mapping[bytes, bytes] | Exception
    ip_sets: Mapping[str, Iterable[bytes] | Exception] = field(default_factory=dict)
    ip_lists: Mapping[IPListRef, bytes | Exception | None] = field(default_factory=dict)
    health: Mapping[bytes, bytes] | Exception = field(default_factory=dict)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Layout:
    """Key names under one prefix (default ``canary:``)."""

    prefix: str = "canary:"

    @property
    def config(self) -> str:
        return self.prefix + "config"

    @property
    def channel(self) -> str:
        return self.prefix + "changes"

    @property
    def audit(self) -> str:
        return self.prefix + "audit"

    @property
    def health(self) -> str:
        return self.prefix + "health"

    @property
    def traffic(self) -> str:
        return self.prefix + "traffic"

    @property
    def shadow_counts(self) -> str:
        return self.prefix + "shadow:counts"

    @property
    def shadow_samples(self) -> str:
        return self.prefix + "shadow:samples"

    def set_key(self, name: str) -> str:
        if not valid_name(name):
            raise ValueError(f"set names are 1-64 of [A-Za-z0-9_.:-], got {name!r}")
        return f"{self.prefix}set:{name}"

    # -- reads -------------------------------------------------------------------------
    def read_state(
        self, ip_sets: Iterable[str], ip_lists: Iterable[IPListRef]
    ) -> tuple[list[Command], list[str], list[IPListRef]]:
        sets, lists = sorted(ip_sets), sorted(ip_lists, key=lambda ref: (ref.db or 0, ref.key))
        commands: list[Command] = [
            (None, ("HGETALL", self.config)),
            (None, ("HGETALL", self.health)),
        ]
        commands += [(None, ("SMEMBERS", self.set_key(name))) for name in sets]
        commands += [(ref.db, ("GET", ref.key)) for ref in lists]
        return commands, sets, lists

    @staticmethod
    def parse_state(
        results: Sequence[object], sets: list[str], lists: list[IPListRef]
    ) -> StoreState:
        config, health = (
            value if isinstance(value, (dict, Exception)) else TypeError(f"bad reply {value!r}")
            for value in results[:2]
        )
        set_results = results[2 : 2 + len(sets)]
        list_results = results[2 + len(sets) :]
        return StoreState(
            config,
            dict(zip(sets, set_results, strict=False)),  # type: ignore[arg-type]
            dict(zip(lists, list_results, strict=False)),  # type: ignore[arg-type]
            health,
        )

    def lookup(self, probes: Sequence[Probe]) -> list[Command]:
        commands: list[Command] = []
        for ref, member in probes:
            if isinstance(ref, SetRef):
                commands.append((None, ("SISMEMBER", self.set_key(ref.name), member)))
            elif isinstance(ref, IPKeyRef):
                commands.append((ref.db, ("GET", member)))
        return commands

    @staticmethod
    def parse_lookup(probes: Sequence[Probe], results: Sequence[object]) -> dict[Probe, bool]:
        """Answers for the probes that succeeded; failed ones are left out (unknown)."""
        answers: dict[Probe, bool] = {}
        for probe, result in zip(probes, results, strict=False):
            if isinstance(result, Exception):
                continue
            if isinstance(probe[0], IPKeyRef):
                answers[probe] = result is not None and _text(result) == probe[1]
            else:
                answers[probe] = bool(result)
        return answers

    # -- writes ----------------------------------------------------------------------
    def change(
        self,
        *,
        expected_version: int | None,
        commands: Sequence[tuple[str | int, ...]],
        keys: Sequence[str],
        audit: Mapping[str, str],
        what: str,
        name: str | None = None,
        counted: bool = False,
    ) -> Command:
        """One atomic change: check the version (None: any), bump it, run ``commands``,
        append ``audit`` to the audit stream and announce it on the channel. Redis runs it
        as a Lua script (CHANGE_SCRIPT), the memory backend natively. ``keys``: every key
        the commands touch (Redis Cluster routes the script by them). ``counted``: the
        commands' replies count what they changed; a change that changed nothing bumps,
        records and announces nothing (the audit entry of one that did gets ``changed``)."""
        message = json.dumps({"what": what, "name": name}, separators=(",", ":"))
        fields = [item for pair in audit.items() for item in pair]
        return (
            None,
            (
                CHANGE,
                self.config,
                self.audit,
                "" if expected_version is None else expected_version,
                json.dumps([list(command) for command in commands]),
                json.dumps(fields),
                AUDIT_LENGTH,
                self.channel,
                message,
                json.dumps(list(keys)),
                "1" if counted else "",
            ),
        )

    def history(self, count: int) -> list[Command]:
        return [(None, ("XREVRANGE", self.audit, "+", "-", "COUNT", count))]

    def set_health(
        self, records: Mapping[str, str], lapsed: Sequence[str] = (), announce: bool = True
    ) -> list[Command]:
        """Write health records (backend URL → JSON) in one round trip, delete fields that
        have lapsed, and (``announce``) tell every router to re-read at once."""
        message = json.dumps({"what": "health", "name": None}, separators=(",", ":"))
        pairs = [item for url, record in sorted(records.items()) for item in (url, record)]
        commands: list[Command] = []
        if pairs:
            commands.append((None, ("HSET", self.health, *pairs)))
        if lapsed:
            commands.append((None, ("HDEL", self.health, *lapsed)))
        if announce:
            commands.append((None, ("PUBLISH", self.channel, message)))
        return commands

    def add_traffic(self, counts: Mapping[str, int]) -> list[Command]:
        return [(None, ("HINCRBY", self.traffic, target, n)) for target, n in counts.items()]

    def add_shadow(self, counts: Mapping[str, int], samples: Sequence[str]) -> list[Command]:
        """Fold one interval of shadow counts and sample differences in (one round trip)."""
        commands: list[Command] = [
            (None, ("HINCRBY", self.shadow_counts, name, n)) for name, n in counts.items()
        ]
        if samples:
            commands.append((None, ("LPUSH", self.shadow_samples, *samples)))
            commands.append((None, ("LTRIM", self.shadow_samples, 0, SHADOW_SAMPLES - 1)))
        return commands

    def shadow_report(self) -> list[Command]:
        return [
            (None, ("HGETALL", self.shadow_counts)),
            (None, ("LRANGE", self.shadow_samples, 0, SHADOW_SAMPLES - 1)),
        ]

    def members(self, name: str) -> list[Command]:
        return [(None, ("SMEMBERS", self.set_key(name)))]

    def get_config(self) -> list[Command]:
        return [(None, ("HGETALL", self.config))]
