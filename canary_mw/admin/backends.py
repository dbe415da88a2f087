"""Backend health for ``status``: one entry per backend URL, with the routes that lead to it.

Routers share a record per backend URL (canary_mw.health). ``status`` runs outside any
router, so it shows every URL the store's upstreams resolve to (checked or not) and every
URL a router has reported on (the routers' own upstreams, which the store does not know).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigurationError
from ..health import SharedState
from ..upstreams import parse_upstream_document

__all__ = ["health_lines", "health_view"]


def _routes(upstreams: Any) -> dict[str, list[str]]:
    """Backend URL → the routes leading to it (``name``, ``name@host``), from a valid
    upstreams document."""
    try:
        document = parse_upstream_document(upstreams)
    except ConfigurationError:
        return {}
    routes: dict[str, list[str]] = {}
    for name, route in sorted(document.items()):
        if route.default is not None:
            routes.setdefault(route.default.key, []).append(name)
        for host, upstream in sorted(route.hosts.items()):
            routes.setdefault(upstream.key, []).append(f"{name}@{host}")
    return routes


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def health_view(
    raw: Mapping[bytes, bytes] | Mapping[str, str], upstreams: Any, now: float | None = None
) -> dict[str, dict[str, Any]]:
    """URL → ``state`` (healthy, ejected, lapsed: no router renewed it, not checked,
    unreadable), ``routes``, and the record's fields."""
    now = time.time() if now is None else now
    routes = _routes(upstreams)
    view: dict[str, dict[str, Any]] = {
        url: {"state": "not checked", "routes": names} for url, names in routes.items()
    }
    for field, value in raw.items():
        url = _text(field)
        entry = view.setdefault(url, {"routes": []})
        record = SharedState.decode(value)
        if record is None:
            entry.update(state="unreadable", raw=_text(value))
            continue
        state = "healthy" if record.healthy else "ejected"
        entry.update(
            state=state if record.until > now else "lapsed",
            healthy=record.healthy, since=record.since,
            until=None if record.until == float("inf") else record.until,
            reason=record.reason, by=record.by,
        )  # fmt: skip
    return dict(sorted(view.items()))


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def health_lines(view: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per backend URL a router has reported on (the upstreams section above lists
    every URL; one nobody checks has nothing to add)."""
    lines = ["health"]
    for url, entry in view.items():
        state = entry["state"]
        if state == "not checked":
            continue
        routes = ", ".join(entry["routes"]) or "not in the store's upstreams"
        line = f"  {url}  {state.upper() if state == 'ejected' else state}  ({routes})"
        if "reason" in entry:
            line += f": {entry['reason']}, since {_when(entry['since'])}, by {entry['by']}"
        lines.append(line)
    if len(lines) == 1:
        lines.append("  (no checks reported)")
    return lines
