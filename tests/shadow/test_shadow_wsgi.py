"""Shadow traffic through CanaryWSGI under gunicorn (gthread, forked worker): copies sent by
the worker's own threads, the JSON diff, a listed POST's body byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from canary_mw import store_from_url
from tests.support.servers import AppServer, RedisServer, uvicorn_command, wait_until

pytestmark = pytest.mark.slow

GUNICORN = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1",
            "-b", "127.0.0.1:{port}", "--log-level", "warning",
            "tests.shadow.apps:wsgi_router()"]  # fmt: skip


@pytest.fixture(scope="module")
def servers(redis_srv: RedisServer) -> Iterator[tuple[AppServer, AppServer, str]]:
    url = f"{redis_srv.url}?prefix=wsgishadow{os.getpid()}:"
    canary = AppServer(uvicorn_command("tests.shadow.apps:canary_app"))
    router = AppServer(GUNICORN, env={"SHADOW_TEST_STORE": url})
    try:
        yield canary.start(), router.start(), url
    finally:
        router.cleanup()
        canary.cleanup()


def test_wsgi_copies_are_compared_and_bodies_arrive_whole(
    servers: tuple[AppServer, AppServer, str],
) -> None:
    canary, router, url = servers
    store = store_from_url(url)
    client = httpx.Client(timeout=10)
    try:
        store.set_mirror({"upstream": canary.url, "methods": ["GET", "HEAD", "POST"],
                          "compare": {"body": "json", "ignore": ["/time"]}})  # fmt: skip

        def seen(path: str) -> list[dict[str, str]]:
            entries = client.get(canary.url + "/_seen").json()["seen"]
            return [entry for entry in entries if entry["path"] == path]

        def mirrored() -> bool:  # the worker follows the change (pub/sub, within a second)
            path = f"/probe/{os.urandom(4).hex()}"
            client.get(router.url + path)
            return bool(wait_until(lambda: seen(path), timeout=1, what=path))

        wait_until(mirrored, timeout=10, what="the mirror in force")
        body = os.urandom(30_000)
        digest = hashlib.sha256(body).hexdigest()
        answer = client.post(router.url + "/upload/1", content=body).json()
        assert answer == {"sha256": digest, "size": len(body)}
        assert client.get(router.url + "/json/1").status_code == 200
        (copy,) = wait_until(lambda: seen("/upload/1"), timeout=5, what="the POST copy")
        assert (copy["sha256"], copy["shadow"]) == (digest, "1")

        def sample() -> dict[str, object] | None:
            for text in store.shadow_report()[1]:
                found = json.loads(text)
                if found["request"] == "GET /json/1":
                    return found  # type: ignore[no-any-return]
            return None

        found = wait_until(sample, timeout=5, what="the /json diff in the report")
        assert found["differences"] == [
            {"kind": "body", "field": "/price", "stable": "10", "shadow": "12"}
        ]
        wait_until(lambda: store.shadow_report()[0].get("POST /upload/* matches") == 1,
                   timeout=5, what="the POST copy counted as a match")  # fmt: skip
    finally:
        client.close()
        store.close()


def test_wsgi_queue_is_bounded_and_drops_are_counted(
    servers: tuple[AppServer, AppServer, str],
) -> None:
    """The canary sleeps 2 s per copy; one in flight and one waiting per process: the rest of
    the copies are dropped and counted, and no stable answer waits for one."""
    canary, router, url = servers
    store = store_from_url(url)
    client = httpx.Client(timeout=10)
    try:
        # Under a path prefix, so that a copy made under this document (and no other) shows.
        store.set_mirror({"upstream": canary.url + "/v2", "queue": 1, "concurrency": 1,
                          "when": {"path_prefix": "/slow"}})  # fmt: skip

        def copied_once() -> bool:  # the change is in force: a first copy reached the canary
            client.get(router.url + "/slow/first")
            entries = client.get(canary.url + "/_seen").json()["seen"]
            return any(entry["path"] == "/v2/slow/first" for entry in entries)

        wait_until(copied_once, timeout=10, interval=0.2, what="the mirror in force")

        def dropped() -> int:
            return store.shadow_report()[0].get("GET /slow/* dropped", 0)

        before = dropped()  # a probe's own copy may have been dropped (at most one)
        for index in range(10):
            started = time.monotonic()
            assert client.get(f"{router.url}/slow/{index}").status_code == 200
            assert time.monotonic() - started < 1.0  # a copy takes 2 s: none was waited for

        # At most one more in flight and one waiting: 8 of the 10 copies or more are dropped.
        wait_until(lambda: dropped() - before >= 8, timeout=5, what="the drops counted")
    finally:
        client.close()
        store.close()
