from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from canary_mw import ASGIFacts, Snapshot, decide, parse_rules
from canary_mw.sticky import BUCKETS, bucket, threshold

KEYS = [f"user-{i}" for i in range(100_000)]


DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def documented_vectors() -> list[tuple[str, str, str, int]]:
    """(salt, key, first 8 digest bytes in hex, bucket) rows of the table in docs/rules.md."""
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- sticky-vectors:begin -->")[1].split("<!-- sticky-vectors:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:  # after the header and the |---| line
        salt, key, digest, number = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((salt.strip("`"), key.strip("`"), digest.strip("`"), int(number)))
    return rows


def test_the_docs_publish_vectors() -> None:
    rows = documented_vectors()
    assert len(rows) >= 8
    assert any(not key.isascii() for _, key, _, _ in rows)  # UTF-8 is part of the contract


@pytest.mark.parametrize(("salt", "key", "digest", "expected"), documented_vectors())
def test_code_matches_the_documented_vectors(
    salt: str, key: str, digest: str, expected: int
) -> None:
    # The documented formula, computed here independently of canary_mw.sticky ...
    head = hashlib.sha256(salt.encode() + b"\0" + key.encode()).digest()[:8]
    assert head.hex() == digest
    assert int.from_bytes(head, "big") % 10_000 == expected
    # ... and the code the routers run.
    assert bucket(salt, key) == expected


@pytest.mark.parametrize("percent", [0.5, 1, 5, 10, 25, 50, 90])
def test_share_is_within_one_percent_over_100k_keys(percent: float) -> None:
    admitted = threshold(percent)
    share = sum(bucket("rollout-7", key) < admitted for key in KEYS) / len(KEYS) * 100
    assert abs(share - percent) <= 1.0, share


def test_growing_the_percentage_keeps_everyone_who_was_in() -> None:
    def admitted(percent: float) -> set[str]:
        snapshot = Snapshot(
            ruleset=parse_rules(
                [{"id": "pct", "when": {"percent": percent, "by": "cookie:uid", "salt": "s1"}}]
            ),
            loaded=True,
        )
        chosen = set()
        for key in KEYS[:20_000]:
            facts = ASGIFacts({"type": "http", "headers": [(b"cookie", f"uid={key}".encode())]})
            if decide(facts, snapshot, {}).target == "canary":
                chosen.add(key)
        return chosen

    steps = [admitted(p) for p in (1, 5, 5.01, 20, 50, 100)]
    for smaller, larger in itertools.pairwise(steps):
        assert smaller <= larger
        assert len(smaller) <= len(larger)
    assert len(steps[-1]) == 20_000
    assert 150 <= len(steps[0]) <= 250  # ~1% of 20,000


def test_salt_changes_who_is_chosen() -> None:
    first = {key for key in KEYS[:10_000] if bucket("a", key) < 1000}
    second = {key for key in KEYS[:10_000] if bucket("b", key) < 1000}
    assert first != second
    assert 0.05 < len(first & second) / len(first) < 0.2  # independent: ~10% overlap


def test_same_answer_in_another_process() -> None:
    sample = KEYS[:2000]
    script = (
        "import json, sys; from canary_mw.sticky import bucket; "
        "keys = json.load(sys.stdin); print(json.dumps([bucket('x', k) for k in keys]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str hash salt
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(sample),
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert json.loads(result.stdout) == [bucket("x", key) for key in sample]


def test_bucket_range() -> None:
    values = {bucket("s", key) for key in KEYS[:50_000]}
    assert min(values) >= 0
    assert max(values) < BUCKETS
    assert len(values) > 9_900  # nearly every bucket is used
