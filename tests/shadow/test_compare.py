"""canary_mw.shadow.compare: what differs between the stable and the shadow answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary_mw.shadow.compare import Answer, Difference, compare, noise
from canary_mw.shadow.config import Compare


def j(document: Any, status: int = 200, **headers: str) -> Answer:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Answer(status, raw, json.dumps(document).encode())


JSON = Compare(body="json")
CASES: list[tuple[str, Answer, Answer, Compare, list[tuple[str, str, str, str]]]] = [
    ("identical", j({"a": 1}), j({"a": 1}), JSON, []),
    ("key order is not a difference", Answer(200, (), b'{"a":1,"b":2}'),
     Answer(200, (), b'{"b": 2, "a": 1}'), JSON, []),
    ("status", j({}, 200), j({}, 404), JSON, [("status", "", "200", "404")]),
    ("status not compared", j({}, 200), j({}, 404), Compare(status=False, body="json"), []),
    ("one field", j({"price": 10, "id": 1}), j({"price": 12, "id": 1}), JSON,
     [("body", "/price", "10", "12")]),
    ("ignored field", j({"time": 1, "v": 1}), j({"time": 2, "v": 1}),
     Compare(body="json", ignore=(("time",),)), []),
    ("ignored subtree", j({"meta": {"t": 1, "u": 2}}), j({"meta": {"t": 9, "u": 8}}),
     Compare(body="json", ignore=(("meta",),)), []),
    ("wildcard index", j({"items": [{"id": 1, "n": "a"}, {"id": 2, "n": "b"}]}),
     j({"items": [{"id": 7, "n": "a"}, {"id": 8, "n": "c"}]}),
     Compare(body="json", ignore=(("items", "*", "id"),)), [("body", "/items/1/n", '"b"', '"c"')]),
    ("missing key", j({"a": 1, "b": 2}), j({"a": 1}), JSON, [("body", "/b", "2", "(missing)")]),
    ("extra list item", j([1]), j([1, 2]), JSON, [("body", "/1", "(missing)", "2")]),
    ("type change 1 vs 1.0 vs true", j({"a": 1, "b": 1}), j({"a": 1.0, "b": True}), JSON,
     [("body", "/a", "1", "1.0"), ("body", "/b", "1", "true")]),
    ("object vs list", j({"a": {}}), j({"a": []}), JSON, [("body", "/a", "{}", "[]")]),
    ("not JSON: digest", Answer(200, (), b"<html>"), Answer(200, (), b"<html/>"), JSON,
     [("body", "", "sha256:", "sha256:")]),
    ("digest mode", j({"a": 1}), j({"a": 2}), Compare(), [("body", "", "sha256:", "sha256:")]),
    ("body not compared", j({"a": 1}), j({"a": 2}), Compare(body="none"), []),
    ("truncated bodies are not compared", Answer(200, (), b"x", truncated=True),
     Answer(200, (), b"y"), JSON, []),
    ("configured header", j({}, content_type="application/json"), j({}, content_type="text/html"),
     Compare(headers=("content-type",), body="none"),
     [("header", "content-type", "application/json", "text/html")]),
    ("missing header", j({}, etag="1"), j({}), Compare(headers=("etag",), body="none"),
     [("header", "etag", "1", "None")]),
    ("other headers ignored", j({}, date="1"), j({}, date="2"), JSON, []),
    ("everything", j({"a": 1}, 200), j({"a": 2}, 500), JSON,
     [("status", "", "200", "500"), ("body", "/a", "1", "2")]),
]  # fmt: skip


@pytest.mark.parametrize(("stable", "shadow", "spec", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])  # fmt: skip
def test_compare(
    stable: Answer, shadow: Answer, spec: Compare, expected: list[tuple[str, str, str, str]]
) -> None:
    found = compare(stable, shadow, spec)
    shown = [(d.kind, d.field, d.stable, d.shadow) for d in found]
    if any(d.stable.startswith("sha256:") for d in found):  # digests: only their prefix shown
        shown = [(k, f, s[:7], h[:7]) for k, f, s, h in shown]
        assert found[0].stable != found[0].shadow
    assert shown == expected


NOISE = [
    ("nothing differs", j({"a": 1}), j({"a": 1}), JSON, set()),
    ("a timestamp and an id", j({"t": 1, "id": "x", "v": 1}), j({"t": 2, "id": "y", "v": 1}),
     JSON, {"/t", "/id"}),
    ("configured ignores are not learned again", j({"t": 1, "u": 1}), j({"t": 2, "u": 2}),
     Compare(body="json", ignore=(("t",),)), {"/u"}),
    ("a configured header", j({}, etag="1"), j({}, etag="2"),
     Compare(headers=("etag",), body="json"), {"etag"}),
    ("status and whole-body digests are never noise", Answer(200, (), b"a"),
     Answer(500, (), b"b"), JSON, set()),
]  # fmt: skip


@pytest.mark.parametrize(("first", "second", "spec", "expected"),
                         [case[1:] for case in NOISE], ids=[case[0] for case in NOISE])  # fmt: skip
def test_noise_is_what_differs_between_two_answers_of_one_version(
    first: Answer, second: Answer, spec: Compare, expected: set[str]
) -> None:
    assert noise(first, second, spec) == expected


def test_learned_noise_is_not_compared() -> None:
    stable = j({"t": 1, "price": 10, "items": [{"id": 1}]}, etag="a")
    shadow = j({"t": 2, "price": 12, "items": [{"id": 2}]}, etag="b")
    spec = Compare(headers=("etag",), body="json")
    learned = {"/t", "/items/0/id", "etag"}
    assert compare(stable, shadow, spec, learned) == [Difference("body", "/price", "10", "12")]


def test_long_values_are_shortened_and_differences_capped() -> None:
    stable = {f"k{i}": "x" * 200 for i in range(50)}
    shadow = {f"k{i}": "y" * 200 for i in range(50)}
    found = compare(j(stable), j(shadow), JSON)
    assert len(found) == 20
    assert all(len(d.stable) <= 80 and d.stable.endswith("...") for d in found)
    assert found[0] == Difference("body", "/k0", found[0].stable, found[0].shadow)
