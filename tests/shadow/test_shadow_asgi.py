"""Shadow traffic through CanaryRouter under uvicorn, with a real Redis and a real canary
process (tests/shadow/apps.py): what reaches the canary, what the report says, and that the
stable answer never waits for the copy."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from canary_mw import Store, store_from_url
from tests.support.servers import AppServer, RedisServer, free_port, uvicorn_command, wait_until

pytestmark = pytest.mark.slow

QUEUE, CONCURRENCY = 4, 2


class Setup:
    def __init__(self, redis: RedisServer):
        self.prefix = f"shadow{os.getpid()}:"
        self.url = f"{redis.url}?prefix={self.prefix}"
        self.store: Store = store_from_url(self.url)
        self.canary = AppServer(uvicorn_command("tests.shadow.apps:canary_app"))
        env = {"SHADOW_TEST_STORE": self.url}
        command = uvicorn_command("tests.shadow.apps:asgi_router", factory=True)
        self.a = AppServer(command, env=env)
        self.b = AppServer(command, env=env)
        # Mirroring off: the same router and app on a prefix where no mirror is ever set.
        self.off = AppServer(
            command, env={"SHADOW_TEST_STORE": f"{redis.url}?prefix=off{self.prefix}"}
        )
        self.client = httpx.Client(timeout=10)
        self.probes = 0

    def start(self) -> Setup:
        for server in (self.canary, self.a, self.b, self.off):
            server.start()
        return self

    def cleanup(self) -> None:
        self.client.close()
        for server in (self.canary, self.a, self.b, self.off):
            server.cleanup()
        self.store.close()

    def seen(self) -> dict[str, Any]:
        return self.client.get(self.canary.url + "/_seen").json()  # type: ignore[no-any-return]

    def seen_paths(self, method: str = "GET") -> list[str]:
        return [entry["path"] for entry in self.seen()["seen"] if entry["method"] == method]

    def mirror(self, **changes: Any) -> dict[str, Any]:
        document = {"upstream": self.canary.url, "compare": {"body": "json", "ignore": ["/time"]},
                    "queue": QUEUE, "concurrency": CONCURRENCY, **changes}  # fmt: skip
        self.store.set_mirror(document)
        return document

    def in_force(self, server: AppServer, method: str = "GET") -> None:
        """Wait until ``server`` mirrors: a probe request reaches the canary."""

        def probe() -> bool:
            self.probes += 1
            path = f"/probe-{self.probes}"
            self.client.request(
                method, server.url + path, content=b"x" if method == "POST" else None
            )
            return wait_until(lambda: path in self.seen_paths(method), timeout=1,
                              what=path) is not None  # fmt: skip

        wait_until(probe, timeout=10, what="the mirror in force")

    def report(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        counts, samples = self.store.shadow_report()
        return counts, [json.loads(sample) for sample in samples]


@pytest.fixture(scope="module")
def setup(redis_srv: RedisServer) -> Iterator[Setup]:
    state = Setup(redis_srv)
    try:
        yield state.start()
    finally:
        state.cleanup()


def test_a_change_reaches_two_instances_within_a_second(setup: Setup) -> None:
    """Both instances are asked over and over from the moment of the change; the first request
    of each that was mirrored says when the change was in force there."""
    setup.mirror(queue=100)
    changed = time.monotonic()
    sent: dict[str, tuple[str, float]] = {}  # path -> (instance, seconds after the change)

    def both_mirrored() -> bool:
        seen = set(setup.seen_paths())
        return {name for path, (name, _) in sent.items() if path in seen} == {"a", "b"}

    while time.monotonic() - changed < 3 and (len(sent) % 20 or not both_mirrored()):
        for name, server in (("a", setup.a), ("b", setup.b)):
            path = f"/reach-{name}-{len(sent)}"
            sent[path] = (name, time.monotonic() - changed)
            setup.client.get(server.url + path)
    wait_until(both_mirrored, timeout=5, what="a mirrored request on each instance")
    seen = set(setup.seen_paths())
    first = {
        name: min(at for path, (n, at) in sent.items() if n == name and path in seen)
        for name in ("a", "b")
    }
    assert max(first.values()) < 1.0, first


def test_json_diff_names_the_field_not_the_timestamp_and_500_is_an_error(setup: Setup) -> None:
    setup.mirror()
    setup.in_force(setup.a)  # else the first requests may come before the router follows
    for path in ("/json/1", "/same/1", "/same/2", "/boom/1"):
        assert setup.client.get(setup.a.url + path).status_code == 200

    def counted() -> bool:
        counts, _ = setup.report()
        return (counts.get("GET /json/* mismatch:body") == 1
                and counts.get("GET /same/* matches") == 2
                and counts.get("GET /boom/* errors") == 1)  # fmt: skip

    wait_until(counted, timeout=10, what="the report")
    counts, samples = setup.report()
    assert "GET /json/* matches" not in counts
    (sample,) = [s for s in samples if s["route"] == "GET /json/*"]
    assert sample["request"] == "GET /json/1"
    assert sample["differences"] == [
        {"kind": "body", "field": "/price", "stable": "10", "shadow": "12"}
    ]  # the timestamp differs too, and is ignored as configured
    shadows = {entry["shadow"] for entry in setup.seen()["seen"] if entry["path"] == "/json/1"}
    assert shadows == {"1"}  # X-Canary-Shadow: 1 on every copy


def test_learned_noise_hides_the_timestamp_without_configuring_it(setup: Setup) -> None:
    """compare.learn: the first copy of the route goes to the canary twice; its two answers
    differ in ``time``, which is ignored from then on: the report shows the price only."""
    setup.mirror(compare={"body": "json", "learn": 1})

    def learning() -> bool:  # the new document is in force: a first copy goes out twice
        path = f"/learn-probe/{time.monotonic_ns()}"
        setup.client.get(setup.a.url + path)
        return bool(wait_until(lambda: setup.seen_paths().count(path) == 2, timeout=1, what=path))

    wait_until(learning, timeout=10, what="the learning document in force")
    assert setup.client.get(setup.a.url + "/json/learn").status_code == 200

    def sample() -> dict[str, Any] | None:
        found = [s for s in setup.report()[1] if s["request"] == "GET /json/learn"]
        return found[0] if found else None

    found = wait_until(sample, timeout=10, what="the sample")
    assert [d["field"] for d in found["differences"]] == ["/price"]
    assert len([e for e in setup.seen()["seen"] if e["path"] == "/json/learn"]) == 2


def test_post_is_mirrored_only_when_listed_and_arrives_byte_identical(setup: Setup) -> None:
    setup.mirror()
    setup.in_force(setup.a)  # so a POST left unmirrored is the rule's doing, not the timing
    body = os.urandom(40_000)
    digest = hashlib.sha256(body).hexdigest()
    answer = setup.client.post(setup.a.url + "/upload/1", content=body).json()
    assert answer == {"sha256": digest, "size": len(body)}
    setup.client.get(setup.a.url + "/after/1")
    wait_until(lambda: "/after/1" in setup.seen_paths(), timeout=5, what="/after/1")
    assert "/upload/1" not in setup.seen_paths("POST")

    setup.mirror(methods=["GET", "HEAD", "POST"], max_body=50_000)
    setup.in_force(setup.a, "POST")
    answer = setup.client.post(setup.a.url + "/upload/2", content=body).json()
    assert answer == {"sha256": digest, "size": len(body)}  # stable read the body, whole
    wait_until(lambda: "/upload/2" in setup.seen_paths("POST"), timeout=5, what="the copy")
    (copy,) = [e for e in setup.seen()["seen"] if e["path"] == "/upload/2"]
    assert copy["sha256"] == digest
    assert copy["shadow"] == "1"

    big = os.urandom(60_000)  # over max_body: served, not mirrored, counted
    answer = setup.client.post(setup.a.url + "/upload/3", content=big).json()
    assert answer["sha256"] == hashlib.sha256(big).hexdigest()
    wait_until(lambda: setup.report()[0].get("POST /upload/* skipped:body") == 1, timeout=5,
               what="the skipped body counted")  # fmt: skip
    assert "/upload/3" not in setup.seen_paths("POST")


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _redis_commands(redis: RedisServer) -> int:
    stats = redis.client().info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


def test_a_sleeping_canary_never_slows_stable_and_the_queue_is_bounded(
    setup: Setup, redis_srv: RedisServer
) -> None:
    """The canary sleeps 2 s per copy. Every stable answer arrives long before any copy's
    answer could, the queue holds QUEUE copies and CONCURRENCY are in flight: the rest are
    dropped and counted."""
    setup.mirror()
    setup.in_force(setup.a)
    requests = 30
    on: list[float] = []
    off: list[float] = []
    commands_before = _redis_commands(redis_srv)
    began = time.monotonic()
    for index in range(requests):
        for server, timings in ((setup.a, on), (setup.off, off)):
            started = time.perf_counter()
            response = setup.client.get(f"{server.url}/slow/{index}")
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
    elapsed = time.monotonic() - began
    # No Redis call per request: the routers' background reads and the folds of the counts
    # (one pipeline a second) are all there is, whatever the number of requests.
    commands = _redis_commands(redis_srv) - commands_before
    assert commands < 30 * (1 + elapsed), (commands, elapsed)
    # Structure: the copies take 2 s each; had one been waited for, a stable answer would too.
    assert max(on) < 1.0, sorted(on)[-3:]
    assert _p99(on) < max(5 * _p99(off), _p99(off) + 0.2), (_p99(on), _p99(off))
    # Each 2 s the workers take CONCURRENCY more off the queue (none, on a quick machine).
    accepted = QUEUE + CONCURRENCY * (1 + int((time.monotonic() - began) / 2.0))

    def dropped() -> int:
        return setup.report()[0].get("GET /slow/* dropped", 0)

    wait_until(lambda: dropped() >= requests - accepted, timeout=5, what="drops counted")
    assert dropped() <= requests - 1
    in_flight = sum(1 for e in setup.seen()["seen"] if e["path"].startswith("/slow/"))
    assert in_flight <= accepted


def test_the_canary_down_costs_stable_nothing_and_counts_errors(setup: Setup) -> None:
    setup.mirror(upstream=f"http://127.0.0.1:{free_port()}", queue=100)

    def dead_upstream_in_force() -> bool:  # the canary would answer these the same: a match
        setup.client.get(f"{setup.a.url}/dead-probe/{time.monotonic_ns()}")
        return setup.report()[0].get("GET /dead-probe/* errors", 0) > 0

    wait_until(dead_upstream_in_force, timeout=10, interval=0.2, what="the dead upstream")
    for index in range(20):
        assert setup.client.get(f"{setup.a.url}/down/{index}").status_code == 200

    def all_counted() -> bool:
        counts = setup.report()[0]
        return counts.get("GET /down/* errors", 0) + counts.get("GET /down/* dropped", 0) == 20

    wait_until(all_counted, timeout=10, what="every copy counted as an error")
    assert setup.report()[0].get("GET /down/* errors", 0) >= 1
