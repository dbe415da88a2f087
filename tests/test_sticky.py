from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

from canary_mw import ASGIFacts, Snapshot, decide, parse_rules
from canary_mw.sticky import BUCKETS, bucket, threshold

KEYS = [f"user-{i}" for i in range(100_000)]


def test_buckets_are_pinned() -> None:
    # These values are part of the contract: changing the hash would move users between
    # stable and canary on upgrade. Computed once with BLAKE2b as documented in sticky.py.
    assert [bucket("salt", key) for key in ("user-1", "user-2", "42", "")] == PINNED


PINNED = [2683, 3455, 3199, 8063]


def test_pinned_values_match_the_documented_formula() -> None:
    from hashlib import blake2b

    for key, expected in zip(("user-1", "user-2", "42", ""), PINNED, strict=True):
        digest = blake2b(b"salt\0" + key.encode(), digest_size=8).digest()
        assert int.from_bytes(digest, "big") % 10_000 == expected


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
