"""Comparing the stable answer with the shadow's: pure, no I/O (tests/shadow/test_compare.py).

The result lists *what* differs, so a report can show ``body /price: 10 != 12`` instead of
"the digests differ". JSON bodies are compared structurally, leaf by leaf, skipping the
configured paths (timestamps, request ids); other bodies by SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Compare

__all__ = ["Answer", "Difference", "compare", "json_differences", "noise"]

#: A report keeps this many differences per comparison (the first ones, in document order).
MAX_DIFFERENCES = 20
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Answer:
    """One side's answer as captured: ``truncated`` when the body went past the limit (the
    body is then not compared: a prefix says nothing about the whole)."""

    status: int
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> str | None:
        wanted = name.encode("latin-1")
        values = [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]
        return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class Difference:
    """``kind``: status | header | body. ``field``: the header name or JSON path (``/a/0``),
    ``""`` for the status and a whole-body digest."""

    kind: str
    field: str
    stable: str
    shadow: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "field": self.field, "stable": self.stable,
                "shadow": self.shadow}  # fmt: skip


def _short(value: Any) -> str:
    text = "(missing)" if value is _MISSING else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _ignored(path: tuple[str, ...], ignore: Sequence[tuple[str, ...]]) -> bool:
    for pattern in ignore:
        if len(pattern) <= len(path) and all(
            want in ("*", got) for want, got in zip(pattern, path, strict=False)
        ):
            return True  # a pattern covers its path and everything under it
    return False


def _walk(
    a: Any, b: Any, path: tuple[str, ...], ignore: Sequence[tuple[str, ...]]
) -> Iterator[tuple[str, Any, Any]]:
    if _ignored(path, ignore):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            yield from _walk(a.get(key, _MISSING), b.get(key, _MISSING), (*path, key), ignore)
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            left = a[index] if index < len(a) else _MISSING
            right = b[index] if index < len(b) else _MISSING
            yield from _walk(left, right, (*path, str(index)), ignore)
    elif a != b or type(a) is not type(b):
        yield "/" + "/".join(path), a, b


def json_differences(
    stable: Any, shadow: Any, ignore: Sequence[tuple[str, ...]] = ()
) -> list[Difference]:
    """Leaf-by-leaf differences of two decoded JSON documents, ignored paths skipped."""
    found = []
    for path, a, b in _walk(stable, shadow, (), ignore):
        found.append(Difference("body", path, _short(a), _short(b)))
        if len(found) >= MAX_DIFFERENCES:
            break
    return found


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def _body(
    stable: Answer, shadow: Answer, spec: Compare, learned: Sequence[tuple[str, ...]] = ()
) -> list[Difference]:
    if spec.body == "none" or stable.truncated or shadow.truncated:
        return []
    if spec.body == "json":
        try:
            left, right = json.loads(stable.body), json.loads(shadow.body)
        except ValueError:
            pass  # not JSON on one side: fall back to the bytes
        else:
            return json_differences(left, right, (*spec.ignore, *learned))
    if stable.body == shadow.body:
        return []
    return [Difference("body", "", _digest(stable.body), _digest(shadow.body))]


def compare(
    stable: Answer, shadow: Answer, spec: Compare, learned: Collection[str] = ()
) -> list[Difference]:
    """What differs between the two answers, as configured; empty when they match.
    ``learned``: noise (see :func:`noise`): header names and JSON paths not compared."""
    found: list[Difference] = []
    if spec.status and stable.status != shadow.status:
        found.append(Difference("status", "", str(stable.status), str(shadow.status)))
    for name in spec.headers:
        left, right = stable.header(name), shadow.header(name)
        if left != right and name not in learned:
            found.append(Difference("header", name, str(left), str(right)))
    paths = [tuple(path.split("/")[1:]) for path in learned if path.startswith("/")]
    return found + _body(stable, shadow, spec, paths)


def noise(first: Answer, second: Answer, spec: Compare) -> set[str]:
    """What differs between two answers of the *same* version to the same request: the
    configured headers and JSON paths (a status or a whole-body digest is never noise)."""
    differences = compare(first, second, Compare(False, spec.headers, spec.body, spec.ignore))
    return {d.field for d in differences if d.field}
