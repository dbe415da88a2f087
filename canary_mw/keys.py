"""The store keys a rule can look a request up in, and the membership probes made of them.

Rules name these (``when.user in set``, the OpenResty IP keys and lists), the snapshot holds
what was loaded of them, the stores know where each one lives in Redis, and the engine caches
answers by probe: a module of their own, needed by all of those and needing none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Answers", "IPKeyRef", "IPListRef", "Probe", "SetRef"]


@dataclass(frozen=True, slots=True)
class SetRef:
    """A store set whose members are checked one at a time (e.g. millions of user ids)."""

    name: str


@dataclass(frozen=True, slots=True)
class IPKeyRef:
    """The classic OpenResty layout: a key named after the IP, whose value is that IP."""

    db: int | None = None


@dataclass(frozen=True, slots=True)
class IPListRef:
    """The classic OpenResty white-list: a JSON list of IPs stored under one key."""

    key: str
    db: int | None = None


#: One membership question: is this value in that set (or IP key)?
Probe = tuple[SetRef | IPKeyRef, str]


class Answers(Protocol):
    """Membership answers the decision may use; a plain ``dict`` qualifies."""

    def get(self, probe: Probe, /) -> bool | None: ...
