"""The decision memo: a returning client costs one dictionary lookup instead of a rule walk.

The decision is a pure function of (facts, snapshot, membership answers). For one snapshot,
the facts it depends on are exactly the inputs its compiled rules (and the overrides) read:
the client address, a cookie, a header, the host, the path... So the memo keys each decision
by those inputs alone and remembers it

- for this snapshot only (a new snapshot starts an empty memo),
- until the earliest moment a membership answer it used stops being fresh (after that the
  cache may give it out stale, and must see the read so it can revalidate it),
- while the cache's ``epoch`` stands (a clear, an eviction, an answer replaced by another).

An *unknown* decision (waiting for a lookup) is never remembered. An answer missing from the
cache while a rule was still decided cannot change that decision when it arrives: the
three-valued logic of ``conditions.py`` never lets a known result depend on an unknown one.
A rule made of a node or reader this module does not know turns the memo off for that
snapshot rather than guess its inputs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any

from .. import conditions as c
from ..decide import Overrides, decide_or_stable
from ..facts import RequestFacts
from ..keys import Probe
from ..outcome import Decision
from ..rules import _client_ip_text
from ..snapshot import Snapshot
from .cache import MembershipCache

__all__ = ["MEMO_SIZE", "DecisionMemo", "memo_inputs"]

#: Most decisions remembered per snapshot (the memo starts over when full).
MEMO_SIZE = 4096
#: A key longer than this (in characters, summed) is not remembered: a client sending a 4 KiB
#: cookie must not be able to make the memo hold megabytes.
MAX_KEY_LENGTH = 512

Input = tuple[str, str]  # ("ip", ""), ("header", name), ("cookie", name), ("host", "")...
KeyOf = Callable[[RequestFacts], Hashable]

_NO_INPUT = ("", "")
_FOREVER = float("inf")
_PLAIN = {c.IPIn: "ip", c.IPInSet: "ip", c.IPInList: "ip", c.IPKey: "ip", c.Host: "host",
          c.PathPrefix: "path", c.PathMatches: "path", c.Method: "method"}  # fmt: skip
_READING = (c.ValueInSet, c.ValueEquals, c.ValueOneOf, c.ValueMatches, c.ValuePresent, c.Percent)


def _reader_input(read: Any) -> Input | None:
    if read is _client_ip_text:
        return ("ip", "")
    if type(read) is operator.methodcaller:
        reduced: Any = read.__reduce__()  # (methodcaller, (name, *args))
        source, *args = reduced[1]
        if source in ("header", "cookie", "query") and len(args) == 1 and isinstance(args[0], str):
            return (source, args[0])
    return None


def _node_inputs(node: c.Node, found: set[Input]) -> bool:
    kind = type(node)
    if kind is c.All or kind is c.Any:
        return all(_node_inputs(child, found) for child in node.children)  # type: ignore[attr-defined]
    if kind is c.Not:
        return _node_inputs(node.child, found)  # type: ignore[attr-defined]
    if kind in _PLAIN:
        found.add((_PLAIN[kind], ""))
        return True
    if kind in _READING:
        read = _reader_input(node.read)  # type: ignore[attr-defined]
        if read is None:
            return False
        found.add(read)
        return True
    return False


def memo_inputs(snapshot: Snapshot, overrides: Overrides) -> tuple[Input, ...] | None:
    """Every request input the decision can read under this snapshot, in a fixed order;
    None when a rule reads something this module cannot name (then nothing is memoised)."""
    found: set[Input] = set()
    if overrides.header is not None:
        found.add(("header", overrides.header))
    if overrides.cookie is not None:
        found.add(("cookie", overrides.cookie))
    if overrides.sticky is not None and snapshot.ruleset.pinned is not None:
        found.add(("cookie", overrides.sticky.name))
    for rule in snapshot.rules:
        if not _node_inputs(rule.condition, found):
            return None
    return tuple(sorted(found))


def _reader(source: str, name: str) -> KeyOf:
    if source == "ip":
        return operator.methodcaller("client_ip_key")
    if source in ("host", "path", "method"):
        return operator.attrgetter(source)
    return operator.methodcaller(source, name)


def _key_function(inputs: tuple[Input, ...]) -> KeyOf:
    readers = [_reader(*item) for item in inputs]
    if len(readers) == 1:
        return readers[0]
    if not readers:
        return lambda facts: _NO_INPUT
    return lambda facts: tuple([read(facts) for read in readers])


def _length(key: Hashable) -> int:
    if isinstance(key, tuple):
        return sum(_length(part) for part in key)
    return len(key) if isinstance(key, str) else 0


class _Recording:
    """The cache as ``decide`` reads it, noting until when the answers it gave stay fresh."""

    __slots__ = ("cache", "until")

    def __init__(self, cache: MembershipCache):
        self.cache = cache
        self.until = _FOREVER

    def get(self, probe: Probe, /) -> bool | None:
        answer, fresh_until = self.cache.get_fresh_until(probe)
        if answer is not None and fresh_until < self.until:
            self.until = fresh_until
        return answer


class _Memo:
    """The memo of one snapshot at one cache epoch."""

    __slots__ = ("entries", "epoch", "key_of", "snapshot")

    def __init__(self, snapshot: Snapshot | None, epoch: int, key_of: KeyOf | None):
        self.snapshot = snapshot
        self.epoch = epoch
        self.key_of = key_of
        self.entries: dict[Hashable, tuple[Decision, float]] = {}


class DecisionMemo:
    """``decide`` for an engine, remembering decisions per snapshot (see the module notes).

    >>> memo = DecisionMemo(engine.cache, engine.overrides)
    >>> decision = memo.decide(facts, engine.snapshot)  # same answer as decide(...)
    """

    __slots__ = ("_cache", "_clock", "_current", "_inputs", "maxsize", "overrides")

    def __init__(self, cache: MembershipCache, overrides: Overrides, maxsize: int = MEMO_SIZE):
        self._cache = cache
        self._clock = cache._clock
        self.overrides = overrides
        self.maxsize = maxsize
        self._current = _Memo(None, -1, None)
        # The inputs of the last snapshot analysed: a snapshot with the same rules (a poll
        # that changed nothing else) reuses the key function.
        self._inputs: tuple[Any, KeyOf | None] = (None, None)

    def decide(self, facts: RequestFacts, snapshot: Snapshot) -> Decision:
        memo = self._current
        cache = self._cache
        if memo.snapshot is not snapshot or memo.epoch != cache.epoch:
            memo = self._start(snapshot, cache.epoch)
        key_of = memo.key_of
        if key_of is None:
            return decide_or_stable(facts, snapshot, cache, self.overrides)
        key = key_of(facts)
        found = memo.entries.get(key)
        if found is not None and (found[1] is _FOREVER or self._clock() < found[1]):
            return found[0]
        answers = _Recording(cache)
        decision = decide_or_stable(facts, snapshot, answers, self.overrides)
        until = answers.until
        if (
            not decision.pending
            and (until is _FOREVER or self._clock() < until)
            and _length(key) <= MAX_KEY_LENGTH
        ):
            entries = memo.entries
            if len(entries) >= self.maxsize:
                entries.clear()
            entries[key] = (decision, until)
        return decision

    def _start(self, snapshot: Snapshot, epoch: int) -> _Memo:
        ruleset, key_of = self._inputs
        if ruleset is not snapshot.ruleset:
            inputs = memo_inputs(snapshot, self.overrides) if self.maxsize > 0 else None
            key_of = None if inputs is None else _key_function(inputs)
            self._inputs = (snapshot.ruleset, key_of)
        memo = self._current = _Memo(snapshot, epoch, key_of)
        return memo

    def clear(self) -> None:
        self._current = _Memo(None, -1, None)
