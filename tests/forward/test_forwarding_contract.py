"""The forwarding contract: what a router does to the bytes of a canary request. Exact bodies
and paths, header hygiene, cookie isolation, streaming, failure replies, disconnects, large
bodies and WebSockets, run through both routers in real processes: CanaryRouter under uvicorn
(once per transport) and CanaryWSGI under gunicorn's gthread worker. Where WSGI legitimately
behaves otherwise, the test says so and asserts the WSGI behaviour instead."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from canary_mw.stores import store_from_url
from tests.support.apps import BLOCK, CHUNK, download_digest, pattern
from tests.support.routers import TRUSTED_PROXY, client_from, start_router
from tests.support.servers import (
    AppServer,
    RedisServer,
    free_port,
    peak_rss_kib,
    raw_request,
    uvicorn_command,
    wait_until,
)

pytestmark = pytest.mark.slow

FORCE = {"X-Canary-Force": "always"}
#: Up to 16 MiB: hundreds of chunks and far past every socket and stream buffer, so flow
#: control is exercised both ways. (100 MiB here cost about 90 s of the suite's CPU for no
#: path that 16 MiB misses; the 1 GiB tests below show memory stays flat.)
SIZES = [0, 1, CHUNK - 1, CHUNK + 1, 1 << 20, 16 << 20]
#: CanaryRouter once per transport (ours, httpx's own pool, the two optional ones), and
#: CanaryWSGI under gunicorn gthread: the threaded worker is the one that can stream (SSE)
#: and keep connections alive. tests/routing/test_wsgi.py covers the other WSGI servers' plumbing.
ROUTERS = ["asgi-default", "asgi-httpx", "asgi-aiohttp", "asgi-httpx2", "wsgi-gthread"]


def gunicorn_gthread(app: str = "tests.support.wsgi_apps:make_app()") -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "4",
        "-b", "127.0.0.1:{port}", "--log-level", "warning", app,
    ]  # fmt: skip


@dataclass(frozen=True)
class Router:
    """A router process and which kind it is, so a test can state where WSGI differs."""

    server: AppServer
    kind: str  # "asgi" or "wsgi"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def wsgi(self) -> bool:
        return self.kind == "wsgi"

    @property
    def server_software(self) -> str:
        """The Server header the server in front writes itself."""
        return "gunicorn" if self.wsgi else "uvicorn"


def start_contract_router(name: str, store: str, **options: object) -> Router:
    kind, _, flavour = name.partition("-")
    if kind == "asgi":
        return Router(start_router(store, transport=flavour, **options), "asgi")
    return Router(start_router(store, command=gunicorn_gthread(), **options), "wsgi")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture(scope="module")
def canary_server() -> Iterator[AppServer]:
    """The canary (tests/support/apps.py:canary_app). Its /hang handler never returns, so uvicorn is
    told not to wait for it at shutdown (else every teardown waits out AppServer.stop's 10 s)."""
    command = uvicorn_command("tests.support.apps:canary_app", "--timeout-graceful-shutdown", "1")
    server = AppServer(command).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module", params=ROUTERS)
def router(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    canary_server: AppServer,
    router_prefix: str,
) -> Iterator[Router]:
    """The router under test: every test here runs through each of ROUTERS."""
    router = start_contract_router(
        request.param,
        f"{redis_srv.url}?prefix={router_prefix}",
        upstreams={"canary": canary_server.url, "dead": f"http://127.0.0.1:{free_port()}"},
        trusted_proxies=[TRUSTED_PROXY],
        force_header="X-Canary-Force",
        force_cookie="canary_force",
        timeout={"connect": 2, "read": 3, "write": 30, "pool": 1},
    )
    yield router
    router.server.cleanup()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with client_from("127.0.0.3") as http:
        yield http


@pytest.mark.fault(
    "bodies", "upload {size} B, {framing}", "sha256-identical; our framing, never the client's"
)
@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_is_byte_identical(
    router: Router, client: httpx.Client, size: int, framing: str
) -> None:
    data = pattern(size)
    body = data if framing == "content-length" else chunks(data)
    response = client.post(f"{router.url}/echo", content=body, headers=FORCE)
    assert response.headers["x-canary-version"] == "canary"
    echoed = response.json()
    assert (echoed["body_size"], echoed["body_sha256"]) == (size, sha(data))
    sent = {name.lower(): value for name, value in echoed["headers"]}
    assert "transfer-encoding" not in sent or "content-length" not in sent  # never both
    if framing == "content-length" and size:
        assert sent["content-length"] == str(size)


@pytest.mark.fault("bodies", "download {size} B", "sha256-identical")
@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
def test_download_is_byte_identical(router: Router, client: httpx.Client, size: int) -> None:
    digest, received = hashlib.sha256(), 0
    with client.stream(
        "GET", f"{router.url}/download?size={size}&id=dl{size}", headers=FORCE
    ) as response:
        assert response.headers["content-length"] == str(size)
        for piece in response.iter_raw():
            digest.update(piece)
            received += len(piece)
    assert (received, digest.hexdigest()) == (size, download_digest(size))


def test_raw_path_and_query_arrive_unchanged(router: Router) -> None:
    # Encoded dots inside a name pass (a whole "%2e%2E" segment is a 400: test_dot_segments).
    target = b"/raw/a%2Fb/%7Euser/caf%C3%A9;v=1/%2e%2Ex?q=%20a+b&x=%2F&empty=&dup=1&dup=2&%26=%3D"
    _, body = raw_request(router.port, b"GET " + target + b" HTTP/1.1\r\nHost: shop.example\r\n"
                          b"X-Canary-Force: always\r\n\r\n")  # fmt: skip
    echoed = json.loads(body)
    path, _, query = target.partition(b"?")
    assert echoed["raw_path"].encode("latin-1") == path
    assert echoed["query_string"].encode("latin-1") == query


def test_characters_a_client_library_would_requote_arrive_unchanged(router: Router) -> None:
    """Punctuation that httpx would quote is passed on as it came. (uvicorn and gunicorn
    refuse raw UTF-8 in a request line; tests/routing/test_wsgi.py covers the servers that don't.)"""
    target = b'/raw/<a>"{|}^`\\?q=<b>&r="x"'
    _, body = raw_request(router.port, b"GET " + target + b" HTTP/1.1\r\nHost: shop.example\r\n"
                          b"X-Canary-Force: always\r\n\r\n")  # fmt: skip
    echoed = json.loads(body)
    assert echoed["raw_path"].encode("latin-1") == b'/raw/<a>"{|}^`\\'
    assert echoed["query_string"].encode("latin-1") == b'q=<b>&r="x"'


def test_no_client_library_defaults_reach_the_canary(router: Router) -> None:
    _, body = raw_request(router.port, b"GET /echo HTTP/1.1\r\nHost: shop.example\r\n"
                          b"X-Canary-Force: always\r\n\r\n")  # fmt: skip
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert set(seen) == {
        "host", "x-canary-force", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "x-canary-forwarded",
    }  # fmt: skip
    assert seen["host"] == "shop.example"  # the client's Host is kept by default
    assert seen["x-forwarded-for"] == "127.0.0.3"
    assert seen["x-forwarded-proto"] == "http"


def test_hop_by_hop_headers_are_stripped_both_ways(router: Router, client: httpx.Client) -> None:
    sent = client.get(f"{router.url}/echo", headers={
        **FORCE, "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "secret",
        "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Connection": "keep-alive",
        "Trailer": "X-Checksum", "X-End-To-End": "kept",
    })  # fmt: skip
    seen = {name.lower() for name, _ in sent.json()["headers"]}
    assert not seen & {"connection", "x-drop-me", "keep-alive", "te", "proxy-connection", "trailer"}
    assert "x-end-to-end" in seen

    answer = client.get(f"{router.url}/hop", headers=FORCE)
    assert answer.headers["x-end-to-end"] == "kept"
    for name in ("x-secret-hop", "keep-alive", "proxy-connection"):
        assert name not in answer.headers
    assert answer.headers.get_list("x-canary-version") == ["canary"]  # ours, not the canary's
    # The canary's Date and Server would come on top of the ones the server writes itself.
    assert len(answer.headers.get_list("date")) == 1
    assert answer.headers.get_list("server") == [router.server_software]


def test_several_set_cookie_headers_stay_separate(router: Router, client: httpx.Client) -> None:
    response = client.get(f"{router.url}/cookies?user=a", headers=FORCE)
    assert response.headers.get_list("set-cookie") == ["session=a; Path=/", "theme=dark; Path=/"]


def test_one_users_cookies_never_reach_another(router: Router) -> None:
    with client_from("127.0.0.61") as user_a, client_from("127.0.0.62") as user_b:
        for _ in range(3):
            first = user_a.get(f"{router.url}/cookies?user=alice", headers=FORCE)
            assert "session=alice" in first.headers["set-cookie"]
            user_b.cookies.clear()
            second = user_b.get(f"{router.url}/cookies?user=bob", headers=FORCE)
            assert second.json()["cookie"] == ""  # bob sent none, and the router added none
        assert user_a.get(f"{router.url}/cookies", headers=FORCE).json()["cookie"] == (
            "session=alice; theme=dark"  # a's own cookies still pass through as headers
        )


def test_an_http_1_0_client_gets_a_stream_without_chunked_framing(
    router: Router, canary_server: AppServer
) -> None:
    """The canary streams without a length (chunked to us); HTTP/1.0 has no chunked
    encoding, so the server in front must end the body by closing the connection."""
    ident = f"sse10_{time.monotonic_ns()}"
    httpx.get(f"{canary_server.url}/release?id={ident}")  # both events go out at once
    request = b"GET /sse?id=%s HTTP/1.0\r\nHost: shop.example\r\n" % ident.encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(request + b"X-Canary-Force: always\r\n\r\n")
        data = b""
        while piece := sock.recv(65536):  # until the server closes: the body's only end
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0].startswith((b"http/1.0 200", b"http/1.1 200")), head
    chunked = b"transfer-encoding: chunked" in lines
    if router.wsgi:
        # gunicorn knows HTTP/1.0 has no chunked encoding: the close ends the body.
        assert not chunked, head
    else:
        # uvicorn's httptools protocol frames a length-less body chunked whatever the
        # request's version (its h11 one does not); the router sends no framing header of
        # its own. What matters here: the events arrive whole, in framing the server chose.
        assert chunked, head
        body = _dechunk(body)
    assert body == b"data: first\n\ndata: second\n\n"


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


def test_server_sent_events_stream_before_the_canary_finishes(
    router: Router, canary_server: AppServer, client: httpx.Client
) -> None:
    ident = f"sse{time.monotonic_ns()}"
    with client.stream("GET", f"{router.url}/sse?id={ident}", headers=FORCE) as response:
        stream = response.iter_raw()
        received = b""
        while b"data: first\n\n" not in received:
            received += next(stream)
        state = httpx.get(f"{canary_server.url}/status?id={ident}").json()["state"]
        assert state == "waiting"  # the first event arrived while the canary is still mid-stream
        httpx.get(f"{canary_server.url}/release?id={ident}")
        received += b"".join(stream)
    assert received == b"data: first\n\ndata: second\n\n"


def test_canary_5xx_passes_through(router: Router, client: httpx.Client) -> None:
    response = client.post(f"{router.url}/code?code=503", headers=FORCE, content=b"x")
    assert (response.status_code, response.text) == (503, "from canary")


@pytest.fixture
def dead_rule(redis_srv: RedisServer, router_prefix: str) -> Iterator[None]:
    store = store_from_url(redis_srv.url, prefix=router_prefix)
    store.set_rules({"rules": [{"id": "dead", "when": {"header": "X-Dead", "present": True},
                                "target": "dead"}]})  # fmt: skip
    yield
    store.clear_rules()
    store.close()


def test_unreachable_canary_gives_502(
    router: Router, client: httpx.Client, dead_rule: None
) -> None:
    wait_until(lambda: client.get(f"{router.url}/", headers={"X-Dead": "1"}).status_code == 502,
               timeout=2, what="the dead rule")  # fmt: skip
    response = client.get(f"{router.url}/", headers={"X-Dead": "1"})
    assert response.text == "Bad Gateway: the canary upstream could not be reached.\n"
    assert "127.0.0.1" not in response.text  # details go to the log, not to the client
    assert response.headers["x-canary-version"] == "dead"


def test_hanging_canary_gives_504_after_the_read_timeout(
    router: Router, client: httpx.Client
) -> None:
    start = time.monotonic()
    response = client.get(f"{router.url}/hang", headers=FORCE)
    elapsed = time.monotonic() - start
    assert response.status_code == 504
    assert 2.5 < elapsed < 10  # the router's read timeout is 3 s


def test_client_leaving_mid_download_closes_the_upstream(
    router: Router, canary_server: AppServer
) -> None:
    ident = f"leave{time.monotonic_ns()}"
    with (
        client_from("127.0.0.3") as leaving,
        leaving.stream(
            "GET", f"{router.url}/download?size={1 << 30}&id={ident}&pace=0.005", headers=FORCE
        ) as response,
    ):
        first = next(response.iter_raw())
        assert first
    # the client is gone; the canary must see its connection closed, not stream 1 GiB
    wait_until(
        lambda: httpx.get(f"{canary_server.url}/status?id={ident}").json()["state"] == "aborted",
        timeout=2,
        what="the canary to see the disconnect",
    )


@pytest.fixture(scope="module", params=["asgi-default", "wsgi-gthread"])
def fallback_router(
    request: pytest.FixtureRequest, redis_srv: RedisServer, router_prefix: str
) -> Iterator[Router]:
    """A router with fallback on, of each kind: no byte reaches a transport here, so the ASGI
    one runs with the default transport only."""
    router = start_contract_router(
        request.param,
        f"{redis_srv.url}?prefix={router_prefix}",
        upstreams={"dead": f"http://127.0.0.1:{free_port()}"},
        fallback=True,
    )
    yield router
    router.server.cleanup()


def test_fallback_serves_stable_for_idempotent_requests_only(
    fallback_router: Router, client: httpx.Client, dead_rule: None
) -> None:
    url = f"{fallback_router.url}/page"
    wait_until(lambda: client.get(url, headers={"X-Dead": "1"}).headers["x-decision"] == "fallback:dead",
               timeout=2, what="fallback")  # fmt: skip
    response = client.get(url, headers={"X-Dead": "1"})
    assert (response.status_code, response.text) == (200, "This is version 1\n")
    assert response.headers["x-canary-version"] == "stable"
    put = client.put(url, headers={"X-Dead": "1"}, content=b"payload")
    assert put.headers["x-body-size"] == "7"  # the stable app still got the whole body
    # Both routers read some body before connecting; stable is given back what they read.
    small = pattern(CHUNK - 5)
    for content in (small, chunks(small, 1000)):
        put = client.put(url, headers={"X-Dead": "1"}, content=content)
        assert (put.status_code, put.headers["x-body-size"]) == (200, str(len(small)))
    big = pattern(3 * CHUNK + 5)
    put = client.put(url, headers={"X-Dead": "1"}, content=big)
    # Past the 64 KiB a router may hold: it still reads only its first piece before
    # connecting, so stable gets that piece back, then reads the rest from the client.
    assert (put.status_code, put.headers["x-body-size"]) == (200, str(len(big)))
    post = client.post(url, headers={"X-Dead": "1"}, content=b"payload")
    assert post.status_code == 502  # not idempotent: never replayed elsewhere


def test_websocket_to_the_canary(router: Router, canary_server: AppServer) -> None:
    mark = f"wsmark{time.monotonic_ns()}"
    url = f"ws://127.0.0.1:{router.port}/ws?room={mark}"
    if router.wsgi:
        # PEP 3333 has no protocol switch: CanaryWSGI forwards the handshake as a plain GET
        # with Upgrade and Connection removed (hop-by-hop), so the canary never switches
        # protocols on a connection gunicorn still reads as HTTP, and the client is refused.
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, additional_headers=FORCE, open_timeout=10)
        assert refused.value.response.status_code == 200
        assert refused.value.response.body == b"This is version 2\n"
        [seen] = httpx.get(f"{canary_server.url}/seen?mark={mark}").json()
        assert not {name.lower() for name, _ in seen["headers"]} & {"upgrade", "connection"}
        return
    with ws_connect(url, additional_headers=FORCE, subprotocols=["chat.v2", "chat"]) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("hello")
        assert ws.recv(timeout=5) == "echo:hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"echo:\x00\x01binary"
        ws.send("close-please")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "asked to")


def test_websocket_to_stable(router: Router) -> None:
    if router.wsgi:
        # No WebSockets in WSGI (see above): the handshake reaches the stable Flask app, whose
        # werkzeug routing refuses an Upgrade to a route that is not a WebSocket one (400,
        # WebsocketMismatch); the canary would have answered 200 "This is version 2".
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(f"ws://127.0.0.1:{router.port}/ws", open_timeout=10)
        response = refused.value.response
        assert (response.status_code, response.reason_phrase) == (400, "BAD REQUEST")
        assert b"version 2" not in response.body
        return
    with ws_connect(f"ws://127.0.0.1:{router.port}/ws") as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "stable:hi"


@pytest.mark.parametrize("kind", ["asgi-default", "wsgi-gthread"])
def test_one_gib_through_the_router_keeps_memory_flat(
    redis_srv: RedisServer, canary_server: AppServer, kind: str
) -> None:
    """A dedicated router process, so its peak RSS is this transfer's alone."""
    router = start_contract_router(kind, f"{redis_srv.url}?prefix=rss{free_port()}:",
                                   canary_url=canary_server.url, force_header="X-Canary-Force")  # fmt: skip
    try:
        with client_from("127.0.0.3") as http:
            warm = http.get(f"{router.url}/warm", headers=FORCE)
            # gunicorn's master forks the worker that does the work: measure that one.
            pid = int(warm.headers["x-worker-pid"]) if router.wsgi else router.server.pid
            before = peak_rss_kib(pid)
            size = 1 << 30
            upload = http.post(f"{router.url}/echo", headers=FORCE,
                               content=(BLOCK for _ in range(size // CHUNK)))  # fmt: skip
            digest = hashlib.sha256()
            for _ in range(size // CHUNK):
                digest.update(BLOCK)
            assert upload.json()["body_sha256"] == digest.hexdigest()
            after_upload = peak_rss_kib(pid)
            received = 0
            with http.stream(
                "GET", f"{router.url}/download?size={size}&id=big", headers=FORCE
            ) as down:
                for piece in down.iter_raw():
                    received += len(piece)
            assert received == size
            after_download = peak_rss_kib(pid)
        print(f"{kind} router peak RSS: {before} KiB before, +{after_upload - before} KiB after "
              f"1 GiB up, +{after_download - before} KiB after 1 GiB down")  # fmt: skip
        assert after_upload - before < 64 * 1024
        assert after_download - before < 64 * 1024
    finally:
        router.server.cleanup()
