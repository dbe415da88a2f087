"""Turn raw store reads into snapshots, keeping the last good value of anything invalid.

Garbage in the store never reaches a request: an invalid rule document, an unknown mode or a
key of the wrong type leaves the previous value in force and is logged once (until its
content changes again), and an unparsable member of an IP set is skipped. The log line says
what is in force: the last good value, or, for a router that has read none since it started,
the default (mode "rules", the default rules, its own upstreams, an unknown condition).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from ..errors import ConfigurationError, RuleError
from ..health.state import SharedState, read_shared
from ..ipmatch import EMPTY_MATCHER, IPMatcher, IPNetwork, parse_network
from ..keys import IPListRef
from ..rules import RuleSet, parse_rules
from ..shadow.config import MirrorConfig, parse_mirror
from ..snapshot import MODES, Mode, Snapshot
from ..stores.layout import StoreState
from ..upstreams import UpstreamRoute, parse_upstream_document

__all__ = ["SnapshotBuilder"]

logger = logging.getLogger("canary_mw.store")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


K = TypeVar("K")
R = TypeVar("R")


def _refreshed(
    wanted: Iterable[K],
    read: Mapping[K, R],
    previous: Mapping[K, IPMatcher],
    build: Callable[[K, R, IPMatcher | None], IPMatcher | None],
) -> dict[K, IPMatcher]:
    """The matcher for each wanted key: rebuilt from this read when it has the key, else the
    previous one; keys never successfully read stay absent (their rules are unknown)."""
    matchers: dict[K, IPMatcher] = {}
    for key in wanted:
        matcher = build(key, read[key], previous.get(key)) if key in read else previous.get(key)
        if matcher is not None:
            matchers[key] = matcher
    return matchers


class SnapshotBuilder:
    def __init__(self, default_rules: RuleSet):
        self.default_rules = default_rules
        self.current = Snapshot(ruleset=default_rules)
        self._rules_raw: bytes | None = None
        self._upstreams_raw: bytes | None = None
        self._mirror_raw: bytes | None = None
        #: Called with the new mirror config whenever it changes (the routers keep it in
        #: one attribute, so that with mirroring off a request pays one None check).
        self.mirror_watchers: list[Callable[[MirrorConfig | None], None]] = []
        self._set_raw: dict[str, frozenset[bytes]] = {}
        self._list_raw: dict[IPListRef, bytes] = {}
        self._problems: dict[str, str] = {}
        # Whether a valid value was ever read, which decides what a problem leaves in force.
        self._config_read = False
        self._mode_read = False
        self._upstreams_read = False

    # -- what to read ------------------------------------------------------------------
    def wants(self) -> tuple[frozenset[str], frozenset[IPListRef]]:
        ruleset = self.current.ruleset
        return ruleset.ip_sets, ruleset.ip_lists

    def covers(self, state: StoreState) -> bool:
        """True when ``state`` holds every set the current rules refer to."""
        sets, lists = self.wants()
        return sets <= state.ip_sets.keys() and lists <= state.ip_lists.keys()

    # -- problem reporting (once per distinct problem) ---------------------------------
    def _problem(self, what: str, message: str, in_force: str = "the last good value") -> None:
        """Log once per distinct problem, saying what is in force instead: the last good
        value, or (for a router that has read none since it started) the default."""
        if self._problems.get(what) != message:
            self._problems[what] = message
            logger.error("canary_mw: invalid %s in the store (%s); in force: %s",
                         what, message, in_force)  # fmt: skip

    def _resolved(self, what: str) -> None:
        if self._problems.pop(what, None) is not None:
            logger.warning("canary_mw: %s in the store is valid again", what)

    # -- building ----------------------------------------------------------------------
    def update(self, state: StoreState, now: float | None = None) -> Snapshot:
        """The snapshot for one read; ``now`` (wall clock) decides which health records have
        lapsed."""
        previous = self.current
        mode, ruleset, version = previous.mode, previous.ruleset, previous.version
        upstreams, mirror = previous.upstreams, previous.mirror
        config = state.config
        if isinstance(config, Exception):
            in_force = (
                "the last good mode, rules and upstreams" if self._config_read
                else "mode 'rules', the default rules and the router's own upstreams (nothing "
                "valid read since this router started)"
            )  # fmt: skip
            self._problem("config", f"cannot read the config hash: {config}", in_force)
        else:
            self._resolved("config")
            self._config_read = True
            mode = self._mode(config.get(b"mode"), mode)
            ruleset = self._rules(config.get(b"rules"), ruleset)
            version = self._version(config.get(b"version"), version)
            upstreams = self._upstreams(config.get(b"upstreams"), upstreams)
            mirror = self._mirror(config.get(b"mirror"), mirror)
        health, lapsed = self._health(state.health, previous, time.time() if now is None else now)
        ejected = frozenset(url for url, record in health.items() if not record.healthy)
        if ejected == previous.ejected:
            ejected = previous.ejected  # the same object: routers cache what they derive from it
        ip_sets = _refreshed(ruleset.ip_sets, state.ip_sets, previous.ip_sets, self._ip_set)
        ip_lists = _refreshed(ruleset.ip_lists, state.ip_lists, previous.ip_lists, self._ip_list)
        self.current = Snapshot(
            mode, ruleset, ip_sets, ip_lists, version, True, upstreams, ejected, health, lapsed,
            mirror,
        )  # fmt: skip
        if mirror is not previous.mirror:
            for watcher in self.mirror_watchers:
                watcher(mirror)
        return self.current

    def _mirror(self, raw: bytes | None, previous: MirrorConfig | None) -> MirrorConfig | None:
        if raw is None:
            self._mirror_raw = None
            self._resolved("mirror")
            return None
        if raw == self._mirror_raw:
            return previous
        try:
            mirror = parse_mirror(raw)
        except ConfigurationError as exc:
            self._problem("mirror", str(exc), "the last good mirror" if previous else "no mirror")
            return previous
        self._mirror_raw = raw
        self._resolved("mirror")
        return mirror

    def _upstreams(
        self, raw: bytes | None, previous: Mapping[str, UpstreamRoute]
    ) -> Mapping[str, UpstreamRoute]:
        if raw is None:
            self._upstreams_raw = None
            self._resolved("upstreams")
            return {}
        if raw == self._upstreams_raw:
            return previous
        try:
            routes = parse_upstream_document(json.loads(raw))
        except (ValueError, ConfigurationError) as exc:
            in_force = "the last good upstreams" if self._upstreams_read else (
                "the router's own upstreams (no valid document read since it started)"
            )  # fmt: skip
            self._problem("upstreams", str(exc), in_force)
            return previous
        self._upstreams_read = True
        self._upstreams_raw = raw
        self._resolved("upstreams")
        return routes

    def _health(
        self, raw: Mapping[bytes, bytes] | Exception, previous: Snapshot, now: float
    ) -> tuple[Mapping[str, SharedState], frozenset[str]]:
        """Valid health records by backend URL (unreadable ones eject nothing)."""
        if isinstance(raw, Exception):
            self._problem("health", str(raw), "the health last read, until it lapses")
            kept = {url: record for url, record in previous.health.items() if record.until > now}
            return kept, previous.health_lapsed | (previous.health.keys() - kept.keys())
        self._resolved("health")
        return read_shared(raw, now)

    def _mode(self, raw: bytes | None, previous: Mode) -> Mode:
        if raw is None:
            self._mode_read = True
            self._resolved("mode")
            return "rules"
        text = _text(raw).strip().lower()
        for mode in MODES:
            if text == mode:
                self._mode_read = True
                self._resolved("mode")
                return mode
        in_force = f"the last good mode {previous!r}" if self._mode_read else (
            f"mode {previous!r} (no valid mode read since this router started)"
        )  # fmt: skip
        self._problem("mode", f"{_text(raw)!r} is not one of {list(MODES)}", in_force)
        return previous

    def _rules(self, raw: bytes | None, previous: RuleSet) -> RuleSet:
        if raw is None:
            self._rules_raw = None
            self._resolved("rules")
            return self.default_rules
        if raw == self._rules_raw:
            self._resolved("rules")
            return previous
        try:
            ruleset = parse_rules(raw)
        except RuleError as exc:
            in_force = (
                "the default rules (no valid document read since this router started)"
                if previous is self.default_rules
                else "the last good rules"
            )
            self._problem("rules", str(exc), in_force)
            return previous
        self._rules_raw = raw
        self._resolved("rules")
        return ruleset

    def _version(self, raw: bytes | None, previous: int) -> int:
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError:
            self._problem("version", f"{raw!r} is not an integer")
            return previous

    def _networks(self, what: str, entries: Iterable[str]) -> IPMatcher:
        networks: list[IPNetwork] = []
        bad = []
        for entry in entries:
            try:
                networks.append(parse_network(entry, strict=False))
            except ValueError:
                bad.append(entry)
        if bad:
            self._problem(f"{what} members", f"skipped {len(bad)} invalid: {bad[:5]!r}")
        else:
            self._resolved(f"{what} members")
        return IPMatcher(networks) if networks else EMPTY_MATCHER

    @staticmethod
    def _matcher_in_force(previous: IPMatcher | None) -> str:
        if previous is not None:
            return "the last good members"
        return (
            "nothing (no valid value read since this router started): conditions on it are "
            "unknown, so the requests they decide go to stable"
        )

    def _ip_set(
        self, name: str, raw: Iterable[bytes] | Exception, previous: IPMatcher | None
    ) -> IPMatcher | None:
        what = f"IP set {name!r}"
        if isinstance(raw, Exception):
            self._problem(what, str(raw), self._matcher_in_force(previous))
            return previous
        self._resolved(what)
        members = frozenset(raw)
        if previous is not None and self._set_raw.get(name) == members:
            return previous
        self._set_raw[name] = members
        return self._networks(what, (_text(member) for member in members))

    def _ip_list(
        self, ref: IPListRef, raw: bytes | Exception | None, previous: IPMatcher | None
    ) -> IPMatcher | None:
        what = f"IP list key {ref.key!r} (db {ref.db or 0})"
        if raw is None:
            self._resolved(what)
            return EMPTY_MATCHER
        in_force = self._matcher_in_force(previous)
        if isinstance(raw, Exception):
            self._problem(what, str(raw), in_force)
            return previous
        if previous is not None and self._list_raw.get(ref) == raw:
            return previous
        try:
            entries = json.loads(raw)
        except ValueError as exc:
            self._problem(what, f"not JSON: {exc}", in_force)
            return previous
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            self._problem(what, "expected a JSON list of IP strings", in_force)
            return previous
        self._resolved(what)
        self._list_raw[ref] = raw
        return self._networks(what, entries)
