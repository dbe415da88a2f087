"""The mirror document: which requests are copied to which upstream, and what is compared.

It is stored with the rules (the ``mirror`` field of the config hash), so every instance
follows a change within a second, the change is audited, and ``rollback`` restores it like
any other. The document (docs/shadow.md)::

    {"upstream": "http://canary:8000",          # where the copies go (required)
     "when": {"path_prefix": "/api"},           # the rule condition language (optional)
     "methods": ["GET", "HEAD"],                # the default; others only when listed
     "percent": 100, "by": "ip",                # sample: sticky by ip|header:X|cookie:X|query:X,
                                                #   or "random"
     "max_body": 65536,                         # bigger request bodies are not mirrored
     "compare": {"status": true, "headers": ["content-type"],
                 "body": "json",                # "json" | "digest" | "none"
                 "ignore": ["/updated_at", "/items/*/id"]},
     "queue": 100, "concurrency": 4}            # per process: copies waiting / in flight
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import conditions as c
from ..errors import ConfigurationError, RuleError
from ..facts import RequestFacts
from ..rules import _Compiler
from ..sticky import bucket, threshold
from ..upstreams import Upstream, _parse

__all__ = ["BODY_MODES", "Compare", "MirrorConfig", "parse_mirror"]

BODY_MODES = ("json", "digest", "none")
_FIELDS = frozenset(
    {"upstream", "when", "methods", "percent", "by", "salt", "max_body", "compare",
     "queue", "concurrency"}
)  # fmt: skip
_COMPARE_FIELDS = frozenset({"status", "headers", "body", "ignore", "learn"})
_SAFE = ("GET", "HEAD")
#: Request and response bodies are never held beyond this, whatever max_body says.
MAX_BODY_LIMIT = 16 * 1024 * 1024
_NO_ANSWERS: dict[Any, bool] = {}


def _fail(where: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"mirror: {where}: {message}")


@dataclass(frozen=True, slots=True)
class Compare:
    """What two answers are compared on."""

    status: bool = True
    headers: tuple[str, ...] = ()  # lower-case names
    body: str = "digest"
    #: JSON paths never compared: ``/a/b``, ``*`` matches any key or index at its level.
    ignore: tuple[tuple[str, ...], ...] = ()
    #: Noise learning (Diffy's trick): the first ``learn`` GET/HEAD copies of each route are
    #: sent twice; what differs between the canary's two answers is ignored from then on.
    learn: int = 0


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """A validated mirror document (:func:`parse_mirror`)."""

    upstream: Upstream
    methods: frozenset[str] = frozenset(_SAFE)
    condition: c.Node | None = field(default=None, compare=False)
    percent: float = 100.0
    by: str = "ip"
    salt: str = "mirror"
    max_body: int = 65536
    compare: Compare = Compare()
    queue: int = 100
    concurrency: int = 4
    #: The document as stored (canonical JSON), for display and equality.
    document: str = ""
    _threshold: int = field(default=10_000, repr=False, compare=False)
    _read: c.Reader | None = field(default=None, repr=False, compare=False)

    def wants(self, facts: RequestFacts, snapshot: c.LoadedSets) -> bool:
        """Whether this request is copied: method, condition (unknown: no), sample."""
        if facts.method not in self.methods:
            return False
        if self.condition is not None and not self.condition.evaluate(
            facts, snapshot, _NO_ANSWERS, None
        ):
            return False
        if self._threshold >= 10_000:
            return True
        if self._read is None:  # random
            return random.random() * 100 < self.percent  # sampling, not secrets
        key = self._read(facts)
        return key is not None and key != "" and bucket(self.salt, key) < self._threshold


def _int(document: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = document.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(name, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _strings(value: object, where: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"expected a list of {what}, got {value!r}")
    return tuple(value)


def _compare(spec: object) -> Compare:
    if spec is None:
        return Compare()
    if not isinstance(spec, Mapping):
        raise _fail("compare", 'expected an object such as {"status": true, "body": "json"}')
    extra = sorted(set(spec) - _COMPARE_FIELDS)
    if extra:
        raise _fail("compare", f"unknown field(s) {extra}; expected {sorted(_COMPARE_FIELDS)}")
    status = spec.get("status", True)
    if not isinstance(status, bool):
        raise _fail("compare.status", "expected true or false")
    body = spec.get("body", "digest")
    if body not in BODY_MODES:
        raise _fail("compare.body", f"expected one of {list(BODY_MODES)}, got {body!r}")
    learn = spec.get("learn", 0)
    if not isinstance(learn, int) or isinstance(learn, bool) or not 0 <= learn <= 1000:
        raise _fail("compare.learn", f"expected an integer from 0 to 1000, got {learn!r}")
    headers = _strings(spec.get("headers", []), "compare.headers", "header names")
    ignore = _strings(spec.get("ignore", []), "compare.ignore", "JSON paths")
    for path in ignore:
        if not path.startswith("/"):
            raise _fail("compare.ignore", f"a path starts with '/' (like '/meta/time'): {path!r}")
    return Compare(
        status, tuple(h.lower() for h in headers), body,
        tuple(tuple(p.split("/")[1:]) for p in ignore), learn,
    )  # fmt: skip


def _sample(document: Mapping[str, Any]) -> tuple[float, str, str, int, c.Reader | None]:
    percent = document.get("percent", 100)
    if (
        not isinstance(percent, (int, float)) or isinstance(percent, bool)
        or not math.isfinite(percent) or not 0 <= percent <= 100
    ):  # fmt: skip
        raise _fail("percent", f"expected a number from 0 to 100, got {percent!r}")
    by = document.get("by", "ip")
    salt = document.get("salt", "mirror")
    if not isinstance(salt, str):
        raise _fail("salt", "expected a string")
    if by == "random":
        return float(percent), by, salt, threshold(percent), None
    # The rules' own percent condition validates `by` and builds its reader.
    try:
        node = _Compiler("mirror")._percent({"percent": percent, "by": by, "salt": salt}, "", 0)
    except RuleError:
        choices = "'random', 'ip', 'cookie:NAME', 'header:NAME' or 'query:NAME'"
        raise _fail("by", f"expected {choices}, got {by!r}") from None
    assert isinstance(node, c.Percent)
    return float(percent), by, salt, node.threshold, node.read


def parse_mirror(document: object) -> MirrorConfig:
    """Validate a mirror document (a mapping, or its JSON text); raises ConfigurationError
    saying what to fix."""
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested absurdly deep
            raise _fail("document", f"not JSON: {exc}") from None
    if not isinstance(document, Mapping):
        raise _fail("document", 'expected an object such as {"upstream": "http://canary:8000"}')
    extra = sorted(set(document) - _FIELDS)
    if extra:
        raise _fail("document", f"unknown field(s) {extra}; expected {sorted(_FIELDS)}")
    if "upstream" not in document:
        raise _fail("upstream", "say where the copies go, e.g. 'http://canary:8000'")
    try:
        upstream = _parse("mirror", document["upstream"])
    except ConfigurationError as exc:
        raise _fail("upstream", str(exc).removeprefix("upstream 'mirror': ")) from None
    methods = _strings(document.get("methods", list(_SAFE)), "methods", "HTTP methods")
    condition = None
    if document.get("when") is not None:
        try:
            condition = _Compiler("mirror").compile(document["when"], "when")
        except RuleError as exc:
            raise _fail("when", str(exc)) from None
    percent, by, salt, admitted, read = _sample(document)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return MirrorConfig(
        upstream=upstream,
        methods=frozenset(m.upper() for m in methods),
        condition=condition,
        percent=percent, by=by, salt=salt,
        max_body=_int(document, "max_body", 65536, 0, MAX_BODY_LIMIT),
        compare=_compare(document.get("compare")),
        queue=_int(document, "queue", 100, 1, 100_000),
        concurrency=_int(document, "concurrency", 4, 1, 256),
        document=canonical,
        _threshold=admitted,
        _read=read,
    )  # fmt: skip
