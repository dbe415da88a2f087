"""fallback=True never holds an upload whole: the router remembers at most REPLAY_LIMIT bytes
of a request body for stable to be given again; past that the request is not replayable and
an unreachable upstream gives the 502 it gives without fallback, never a truncated body to
stable. CanaryWSGI keeps nothing: it falls back only when no body was read at all."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from canary_mw import CanaryRouter, CanaryWSGI
from canary_mw.forward.asgi_http import REPLAY_LIMIT, Replayable
from tests.support.apps import BLOCK, CHUNK
from tests.support.routers import canary_server, client_from, start_router  # noqa: F401 - a fixture
from tests.support.servers import AppServer, free_port, peak_rss_kib, uvicorn_command

ALL_TO_CANARY = [{"id": "all", "when": {"path_prefix": "/"}, "target": "canary"}]
BIG = 200 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def big_digest() -> str:
    digest = hashlib.sha256()
    for _ in range(BIG // CHUNK):
        digest.update(BLOCK)
    return digest.hexdigest()


# -- the replay buffer itself ------------------------------------------------------------------
def messages(total: int, size: int) -> list[dict[str, Any]]:
    count = total // size
    return [
        {"type": "http.request", "body": b"x" * size, "more_body": index < count - 1}
        for index in range(count)
    ]


@pytest.mark.anyio
async def test_replay_buffer_keeps_a_small_body_and_forgets_a_large_one() -> None:
    for total, complete in ((REPLAY_LIMIT, True), (REPLAY_LIMIT + CHUNK, False)):
        sent = messages(total, CHUNK // 4)
        source = iter(sent)

        async def receive(source: Iterator[dict[str, Any]] = source) -> dict[str, Any]:
            return next(source)

        replayable = Replayable(receive)
        for _ in sent:
            await replayable()
        assert replayable.complete is complete
        if complete:
            replayable.replay()
            assert [await replayable() for _ in sent] == sent
        else:
            assert not replayable._seen  # forgotten, not held until the request ends
            with pytest.raises(RuntimeError, match="REPLAY_LIMIT"):
                replayable.replay()


# -- in-process: an upstream found unreachable after the body was (partly) read ------------------
class ReadsThenRefuses(httpx.AsyncBaseTransport):
    """Reads up to ``read`` bytes of the request body, then fails as if it never connected
    (as a transport that sends the head and first bytes while connecting would)."""

    def __init__(self, read: int):
        self.read = read

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        taken = 0
        if self.read:
            async for chunk in request.stream:  # type: ignore[union-attr]
                taken += len(chunk)
                if taken >= self.read:
                    break
        raise httpx.ConnectError("connection refused", request=request)


async def stable_echo(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    reply = json.dumps({"served_by": "stable", "size": len(body), "sha": sha(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture
async def router_with(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    routers: list[CanaryRouter] = []

    def make(read: int) -> httpx.AsyncClient:
        router = CanaryRouter(
            stable_echo, canary_url="http://canary.invalid", default_rules=ALL_TO_CANARY,
            fallback=True, transport=ReadsThenRefuses(read), metrics=False, rollouts=False,
        )  # fmt: skip
        routers.append(router)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=router), base_url="http://a")

    yield make
    for router in routers:
        await router.aclose()


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.anyio
@pytest.mark.parametrize("read", [0, 1, 10_000], ids=["nothing read", "first bytes", "all read"])
async def test_small_body_read_then_unreachable_falls_back_whole(
    router_with: Any, read: int
) -> None:
    data = bytes(range(256)) * 40  # 10 KiB, under REPLAY_LIMIT
    async with router_with(read) as client:
        response = await client.put("/upload", content=data)
    assert response.status_code == 200, response.text
    assert response.json() == {"served_by": "stable", "size": len(data), "sha": sha(data)}


@pytest.mark.anyio
async def test_large_body_read_then_unreachable_is_502_not_a_truncated_stable(
    router_with: Any,
) -> None:
    data = b"y" * (4 * REPLAY_LIMIT)
    async with router_with(2 * REPLAY_LIMIT) as client:
        response = await client.put("/upload", content=data)
    assert response.status_code == 502
    assert response.text.startswith("Bad Gateway")
    assert "served_by" not in response.text


# -- real uvicorn routers: memory stays flat ---------------------------------------------------------
def fallback_router(canary_url: str) -> AppServer:
    options = {"canary_url": canary_url, "default_rules": ALL_TO_CANARY, "fallback": True}
    command = uvicorn_command("tests.support.fallback_apps:make_app", factory=True)
    return AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()


@pytest.mark.slow
def test_forwarded_upload_with_fallback_keeps_router_memory_flat(
    canary_server: AppServer,  # noqa: F811 - the fixture imported above
) -> None:
    router = fallback_router(canary_server.url)
    try:
        with client_from("127.0.0.3") as http:
            assert http.put(f"{router.url}/echo", content=b"warm").json()["served_by"] == "canary"
            before = peak_rss_kib(router.pid)
            upload = http.put(f"{router.url}/echo", content=(BLOCK for _ in range(BIG // CHUNK)))
            assert upload.status_code == 200
            assert (upload.json()["served_by"], upload.json()["body_size"]) == ("canary", BIG)
            assert upload.json()["body_sha256"] == big_digest()
            grown = peak_rss_kib(router.pid) - before
        print(f"router peak RSS +{grown} KiB forwarding 200 MiB with fallback=True")
        assert grown < 48 * 1024  # was +200 MiB: every message was kept for a replay
    finally:
        router.cleanup()


@pytest.mark.slow
def test_unreachable_canary_large_upload_goes_whole_to_stable_with_flat_memory() -> None:
    """Nothing of the body was read when the connection was refused, so stable reads it from
    the client itself: whole, and without the router keeping any of it."""
    router = fallback_router(f"http://127.0.0.1:{free_port()}")
    try:
        with client_from("127.0.0.3") as http:
            small = http.put(f"{router.url}/x", content=b"payload")
            assert small.json() == {
                "served_by": "stable", "reason": "fallback", "body_size": 7,
                "body_sha256": sha(b"payload"),
            }  # fmt: skip
            before = peak_rss_kib(router.pid)
            upload = http.put(f"{router.url}/x", content=(BLOCK for _ in range(BIG // CHUNK)))
            assert upload.status_code == 200
            assert (upload.json()["reason"], upload.json()["body_size"]) == ("fallback", BIG)
            assert upload.json()["body_sha256"] == big_digest()
            grown = peak_rss_kib(router.pid) - before
            post = http.post(f"{router.url}/x", content=b"payload")
            assert post.status_code == 502  # not idempotent: never replayed elsewhere
        assert grown < 48 * 1024
    finally:
        router.cleanup()


# -- CanaryWSGI: nothing kept, fallback only when nothing was read ---------------------------------
class SyncReadsThenRefuses(httpx.BaseTransport):
    def __init__(self, read: int):
        self.read = read

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        taken = 0
        if self.read:
            for chunk in request.stream:  # type: ignore[union-attr]
                taken += len(chunk)
                if taken >= self.read:
                    break
        raise httpx.ConnectError("connection refused", request=request)


def wsgi_stable(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"served_by": "stable", "size": len(body), "sha": sha(body)}).encode()]


def wsgi_call(read: int, data: bytes) -> tuple[str, bytes]:
    app = CanaryWSGI(
        wsgi_stable, canary_url="http://canary.invalid", default_rules=ALL_TO_CANARY,
        fallback=True, transport=SyncReadsThenRefuses(read), metrics=False, rollouts=False,
    )  # fmt: skip
    environ = {
        "REQUEST_METHOD": "PUT", "PATH_INFO": "/upload", "QUERY_STRING": "",
        "SERVER_NAME": "a", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.1", "HTTP_HOST": "a", "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }  # fmt: skip
    status: list[str] = []
    try:
        body = b"".join(app(environ, lambda line, headers, *_: status.append(line)))
    finally:
        app.close()
    return status[0], body


def test_wsgi_falls_back_only_when_nothing_was_read() -> None:
    data = b"z" * (4 * REPLAY_LIMIT)
    status, body = wsgi_call(0, data)
    assert status.startswith("200")
    assert json.loads(body) == {"served_by": "stable", "size": len(data), "sha": sha(data)}
    status, body = wsgi_call(1, data)  # one chunk read: stable could only get the rest
    assert status.startswith("502")
    assert body.startswith(b"Bad Gateway")
