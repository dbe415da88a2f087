"""Shadow traffic through CanaryWSGI under gunicorn (gthread, forked worker): copies sent by
the worker's own threads, the JSON diff, a listed POST's body byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import sys
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
