"""Compiled condition nodes and their three-valued evaluation.

A node answers ``True``, ``False`` or ``None`` (unknown: a Redis membership answer it needs is
not available). ``all``/``any``/``not`` follow Kleene logic, so an unknown can only be
resolved by the other operands, never guessed: ``not unknown`` stays unknown, which the
decision turns into stable. When the caller passes a list as ``pending``, leaves append the
membership probes they could not answer, so one batch of lookups can settle the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from .facts import RequestFacts
from .ipmatch import IPMatcher
from .keys import Answers, IPKeyRef, IPListRef, Probe, SetRef
from .regex import Regex
from .sticky import bucket

__all__ = ["MAX_MEMBER_LENGTH", "LoadedSets", "Node"]

#: Values longer than this are never looked up in a store set (they cannot be user ids,
#: and caching them would let one client fill the membership cache with 8 KiB cookies).
MAX_MEMBER_LENGTH = 512


class LoadedSets(Protocol):
    """What a condition reads from a snapshot: the IP sets and lists loaded whole
    (:class:`~canary_mw.snapshot.Snapshot` is one; the snapshot holds rules made of
    conditions, so conditions name only this much of it)."""

    @property
    def ip_sets(self) -> Mapping[str, IPMatcher]: ...

    @property
    def ip_lists(self) -> Mapping[IPListRef, IPMatcher]: ...


Pending = list[Probe] | None
Reader = Callable[["RequestFacts"], "str | None"]


class Node:
    __slots__ = ()

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        raise NotImplementedError


class All(Node):
    __slots__ = ("children",)

    def __init__(self, children: tuple[Node, ...]):
        self.children = children

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        result: bool | None = True
        for child in self.children:
            verdict = child.evaluate(facts, snapshot, answers, pending)
            if verdict is False:
                return False
            if verdict is None:
                result = None
        return result


class Any(Node):
    __slots__ = ("children",)

    def __init__(self, children: tuple[Node, ...]):
        self.children = children

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        result: bool | None = False
        for child in self.children:
            verdict = child.evaluate(facts, snapshot, answers, pending)
            if verdict:
                return True
            if verdict is None:
                result = None
        return result


class Not(Node):
    __slots__ = ("child",)

    def __init__(self, child: Node):
        self.child = child

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        verdict = self.child.evaluate(facts, snapshot, answers, pending)
        return None if verdict is None else not verdict


class IPIn(Node):
    """Client address in a fixed list of addresses and networks."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: IPMatcher):
        self.matcher = matcher

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return facts.client_ip in self.matcher


class IPInSet(Node):
    """Client address in a store set of addresses/networks, loaded whole into the snapshot."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        matcher = snapshot.ip_sets.get(self.name)
        return None if matcher is None else facts.client_ip in matcher


class IPInList(Node):
    """Client address in a legacy JSON white-list key, loaded whole into the snapshot."""

    __slots__ = ("ref",)

    def __init__(self, ref: IPListRef):
        self.ref = ref

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        matcher = snapshot.ip_lists.get(self.ref)
        return None if matcher is None else facts.client_ip in matcher


def _probe(ref: SetRef | IPKeyRef, member: str, answers: Answers, pending: Pending) -> bool | None:
    probe = (ref, member)
    verdict = answers.get(probe)
    if verdict is None and pending is not None:
        pending.append(probe)
    return verdict


class IPKey(Node):
    """Legacy per-IP key: canary when ``GET <ip>`` returns the IP itself."""

    __slots__ = ("ref",)

    def __init__(self, ref: IPKeyRef):
        self.ref = ref

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        address = facts.client_ip
        if address is None:
            return False
        return _probe(self.ref, str(address), answers, pending)


class ValueInSet(Node):
    """A header / cookie / query value is a member of a store set."""

    __slots__ = ("read", "ref")

    def __init__(self, read: Reader, ref: SetRef):
        self.read = read
        self.ref = ref

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        value = self.read(facts)
        if not value or len(value) > MAX_MEMBER_LENGTH:
            return False
        return _probe(self.ref, value, answers, pending)


class ValueEquals(Node):
    __slots__ = ("expected", "read")

    def __init__(self, read: Reader, expected: str):
        self.read = read
        self.expected = expected

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return self.read(facts) == self.expected


class ValueOneOf(Node):
    __slots__ = ("choices", "read")

    def __init__(self, read: Reader, choices: frozenset[str]):
        self.read = read
        self.choices = choices

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return self.read(facts) in self.choices


class ValueMatches(Node):
    __slots__ = ("pattern", "read")

    def __init__(self, read: Reader, pattern: Regex):
        self.read = read
        self.pattern = pattern

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        value = self.read(facts)
        return value is not None and self.pattern.search(value)


class ValuePresent(Node):
    __slots__ = ("present", "read")

    def __init__(self, read: Reader, present: bool):
        self.read = read
        self.present = present

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return (self.read(facts) is not None) is self.present


class Host(Node):
    """Exact host names and ``*.example.com`` wildcards (any subdomain, not the apex)."""

    __slots__ = ("exact", "suffixes")

    def __init__(self, exact: frozenset[str], suffixes: tuple[str, ...]):
        self.exact = exact
        self.suffixes = suffixes

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        host = facts.host
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))


class PathPrefix(Node):
    __slots__ = ("prefixes",)

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return facts.path.startswith(self.prefixes)


class PathMatches(Node):
    __slots__ = ("pattern",)

    def __init__(self, pattern: Regex):
        self.pattern = pattern

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return self.pattern.search(facts.path)


class Method(Node):
    __slots__ = ("methods",)

    def __init__(self, methods: frozenset[str]):
        self.methods = methods

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        return facts.method in self.methods


class Percent(Node):
    """Sticky percentage: the key's bucket is below the rule's threshold."""

    __slots__ = ("read", "salt", "threshold")

    def __init__(self, read: Reader, salt: str, threshold: int):
        self.read = read
        self.salt = salt
        self.threshold = threshold

    def evaluate(
        self, facts: RequestFacts, snapshot: LoadedSets, answers: Answers, pending: Pending
    ) -> bool | None:
        pin = facts.pin
        if pin is not None and pin[0] is self:  # a sticky cookie placed this user already
            return pin[1]
        key = self.read(facts)
        if not key:
            return False
        return bucket(self.salt, key) < self.threshold
