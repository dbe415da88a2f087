"""One round of the check loop, written once as a plan: a generator that yields what to do
(check these URLs, write these records) and receives the results. The blocking and the
asyncio runner (runners.py) drive the same plan, like the stores drive theirs, so the two
routers cannot check differently.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .state import SharedState
from .tracker import BackendHealth

__all__ = ["Backends", "Probe", "Share", "check_round"]


@dataclass(frozen=True, slots=True)
class Backends:
    """What a round works on: every backend URL the upstreams resolve to (URL → the URL
    its check requests), and the store's records as the router last read them."""

    checks: Mapping[str, httpx.URL]
    shared: Mapping[str, SharedState] = field(default_factory=dict)
    lapsed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Probe:
    """Request each URL once; send back ``(passed, what it saw)`` per URL, in order."""

    urls: tuple[httpx.URL, ...]


@dataclass(frozen=True, slots=True)
class Share:
    """Write ``records`` (URL → JSON) and delete the ``lapsed`` fields; send back whether the
    store took them. ``announce``: a verdict changes, so every router should re-read now;
    renewals alone are not announced, since each announcement also empties every router's
    membership cache."""

    records: Mapping[str, str]
    lapsed: tuple[str, ...]
    announce: bool = True


Plan = Generator[Probe | Share, Any, dict[str, SharedState]]


def check_round(health: BackendHealth, backends: Backends) -> Plan:
    """Check every backend, update the verdicts, share what changed. Returns the records
    the store took."""
    urls = list(backends.checks)
    results: list[tuple[bool, str]] = yield Probe(tuple(backends.checks[url] for url in urls))
    health.checked((url, ok, reason) for url, (ok, reason) in zip(urls, results, strict=True))
    health.keep_only(urls)
    records = health.to_share(backends.shared)
    if not records:
        return {}
    lapsed = tuple(sorted(backends.lapsed - records.keys()))
    announce = any(
        (stored := backends.shared.get(url)) is None or stored.healthy != record.healthy
        for url, record in records.items()
    )
    encoded = {url: record.encode() for url, record in records.items()}
    written = yield Share(encoded, lapsed, announce)
    if not written:
        return {}
    health.shared_ok(records)
    return records


def judge(status: int) -> tuple[bool, str]:
    """A check's response: a status below 500 passes (the backend answers; a 404 on the
    health path of an app that has none is still an app that is up)."""
    return status < 500, f"HTTP {status}"


def failure(exc: BaseException) -> tuple[bool, str]:
    return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
