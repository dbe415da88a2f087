"""canary_mw.shadow.config: the mirror document, validated with messages that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest

from canary_mw import ConfigurationError, RequestFacts, WSGIFacts, parse_mirror
from canary_mw.snapshot import Snapshot

UP = "http://canary:8000"

INVALID: list[tuple[Any, str]] = [
    ("not json", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ([], "expected an object"),
    ({}, "say where the copies go"),
    ({"upstream": "ftp://x"}, "http:// or https://"),
    ({"upstream": UP, "extra": 1}, "unknown field(s) ['extra']"),
    ({"upstream": UP, "methods": "GET"}, "methods: expected a list"),
    ({"upstream": UP, "percent": 101}, "percent: expected a number from 0 to 100"),
    ({"upstream": UP, "percent": True}, "percent: expected a number"),
    ({"upstream": UP, "by": "user"}, "'random', 'ip', 'cookie:NAME'"),
    ({"upstream": UP, "max_body": -1}, "max_body: expected an integer from 0"),
    ({"upstream": UP, "queue": 0}, "queue: expected an integer from 1"),
    ({"upstream": UP, "concurrency": 1000}, "concurrency: expected an integer from 1 to 256"),
    ({"upstream": UP, "when": {"nope": 1}}, "when: rule 'mirror', field 'when': unknown condition"),
    ({"upstream": UP, "compare": {"body": "xml"}}, "compare.body: expected one of"),
    ({"upstream": UP, "compare": {"ignore": ["time"]}}, "a path starts with '/'"),
    ({"upstream": UP, "compare": {"status": "yes"}}, "compare.status: expected true or false"),
    ({"upstream": UP, "compare": {"learn": True}}, "compare.learn: expected an integer"),
    ({"upstream": UP, "compare": {"learn": 1001}}, "compare.learn: expected an integer"),
    ({"upstream": UP, "compare": {"noise": 1}}, "unknown field(s) ['noise']"),
]


@pytest.mark.parametrize(("document", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_documents_say_what_to_fix(document: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_mirror(document)
    assert message in str(caught.value)
    assert str(caught.value).startswith("mirror: ")


def facts(method: str = "GET", path: str = "/", **headers: str) -> RequestFacts:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": "203.0.113.7",
               **{"HTTP_" + k.upper(): v for k, v in headers.items()}}  # fmt: skip
    return WSGIFacts(environ)


SNAPSHOT = Snapshot()


@pytest.mark.parametrize(
    ("document", "request_facts", "wanted"),
    [
        ({}, facts("GET"), True),
        ({}, facts("HEAD"), True),
        ({}, facts("POST"), False),
        ({}, facts("DELETE"), False),
        ({"methods": ["get", "post"]}, facts("POST"), True),
        ({"when": {"path_prefix": "/api"}}, facts("GET", "/api/x"), True),
        ({"when": {"path_prefix": "/api"}}, facts("GET", "/web"), False),
        ({"when": {"ip_in_set": "staff"}}, facts("GET"), False),  # unknown: not mirrored
        ({"percent": 0}, facts("GET"), False),
        ({"percent": 0, "by": "random"}, facts("GET"), False),
        ({"percent": 100, "by": "random"}, facts("GET"), True),
        ({"percent": 50, "by": "header:X-User"}, facts("GET"), False),  # no key: not sampled
    ],
)
def test_which_requests_are_mirrored(
    document: dict[str, Any], request_facts: RequestFacts, wanted: bool
) -> None:
    assert parse_mirror({"upstream": UP, **document}).wants(request_facts, SNAPSHOT) is wanted


def test_a_sticky_sample_keeps_the_same_users() -> None:
    mirror = parse_mirror({"upstream": UP, "percent": 30, "by": "header:X-User"})
    users = [f"user-{i}" for i in range(1000)]
    first = [mirror.wants(facts(x_user=u), SNAPSHOT) for u in users]
    assert first == [mirror.wants(facts(x_user=u), SNAPSHOT) for u in users]
    assert 200 < sum(first) < 400


def test_the_stored_form_is_canonical() -> None:
    a = parse_mirror({"upstream": UP, "percent": 5, "methods": ["GET"]})
    b = parse_mirror('{"methods": ["GET"], "percent": 5, "upstream": "http://canary:8000"}')
    assert a.document == b.document
    assert a.methods == frozenset({"GET"})
