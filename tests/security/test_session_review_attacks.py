"""Hostile review of 6bcaa51/0c25e76 (query credentials in the pool partition), ed1942c
(``OPTIONS *``), 86d4b2e (the stable start message copied) and 66429a2 (decide_or_stable)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest

from canary_mw import CanaryConfig, CanaryRouter, CanaryWSGI
from canary_mw.conditions import Node
from canary_mw.forward.partition import IDENTITY_QUERY, partition_key
from canary_mw.rules import Rule, RuleSet
from canary_mw.upstreams import _parse
from tests.forward.test_asterisk_form import RecordingCanary
from tests.forward.test_partition import TIMEOUT, ask, late_copies
from tests.support.routers import start_router
from tests.support.scripted import Upstream as ScriptedUpstream
from tests.support.servers import AppServer, raw_request, uvicorn_command, wait_until

BASE = [(b"host", b"shop"), (b"x-forwarded-for", b"203.0.113.7")]


def key(query: bytes, identity: frozenset[bytes] | None = None) -> bytes:
    if identity is None:
        return partition_key(BASE, query=query)
    return partition_key(BASE, query=query, query_identity=identity)


# -- the partition key: two users the canary tells apart must never share a key -------------
@pytest.mark.parametrize(
    ("alice", "bob"),
    [
        (b"token=alice", b"token=bob"),
        (b"TOKEN=alice", b"token=alice2"),
        (b"token=alice&token=x", b"token=alice&token=y"),  # repeated: every copy counts
        (b"token=x&token=alice", b"token=alice&token=x"),  # order too
        (b"token=a+b", b"token=a%20b"),
        (b"token=a=b", b"token=a"),
        (b"page=1&token=a&page=2", b"page=1&token=b&page=2"),
        (b"a&&token=a", b"a&&token=b"),
    ],
)
def test_query_credentials_that_differ_give_different_keys(alice: bytes, bob: bytes) -> None:
    assert key(alice) != key(bob)


@pytest.mark.parametrize("name", [b"%74oken", b"tok%65n", b"access%5Ftoken", b"%54OKEN"])
def test_percent_encoded_credential_names_are_credentials(name: bytes) -> None:
    alice, bob = name + b"=alice", name + b"=bob"
    # What every Python canary (Starlette, Django, Flask: parse_qsl) reads from them:
    [(decoded, value)] = parse_qsl(alice.decode())
    assert decoded.lower().encode() in IDENTITY_QUERY
    assert value == "alice"
    assert key(alice) != key(bob)


def test_a_non_ascii_identity_query_name_counts_or_is_refused() -> None:
    try:
        identity = CanaryConfig(canary_url="http://canary", identity_query=["jéton"]).query_identity
    except Exception:  # refused: fine
        return
    assert key(b"j%C3%A9ton=alice", identity) != key(b"j%C3%A9ton=bob", identity)


def test_identity_query_names_are_case_insensitive() -> None:
    identity = CanaryConfig(canary_url="http://canary", identity_query=["Ticket"]).query_identity
    assert key(b"TICKET=a", identity) != key(b"ticket=b", identity)
    assert key(b"ticket=a") == key(b"ticket=b")  # not named by default


def _best_seconds(*queries: bytes) -> list[float]:
    """The best of seven timings of each query, taken in turns: whatever else the machine
    does in a moment hits them alike."""
    best = [float("inf")] * len(queries)
    for _ in range(7):
        for index, query in enumerate(queries):
            start = time.perf_counter()
            for _ in range(20):
                partition_key(BASE, query=query)
            best[index] = min(best[index], time.perf_counter() - start)
    return best


@pytest.mark.parametrize("piece", [b"token=&", b"&", b"t", b"TOKEN=a&", b"%74oken=a&"])
def test_reading_the_query_is_linear(piece: bytes) -> None:
    small = piece * (8192 // len(piece))
    large = piece * (65536 // len(piece))
    small_seconds, large_seconds = _best_seconds(small, large)
    ratio = large_seconds / max(small_seconds, 1e-6)
    # 8x the bytes: ~8x the time if linear, ~64x if quadratic. (4x with a bound of 10 failed
    # once under a loaded full run: 22x, from timings taken one after the other.)
    assert ratio < 30, ratio
    assert large_seconds / 20 < 0.05


def test_many_partitions_from_queries_cost_no_more_than_cookies_did() -> None:
    """One client can mint a key per request either way: a fresh cookie did it before 6bcaa51.
    The idle table (idle.py) stays bounded by max_keepalive_connections whatever the keys."""
    cookies = {partition_key([*BASE, (b"cookie", b"s=%d" % i)]) for i in range(500)}
    queries = {key(b"token=%d" % i) for i in range(500)}
    assert len(cookies) == len(queries) == 500


# -- OPTIONS * ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://127.0.0.1:9/prefix", "http://127.0.0.1:9"])
def test_request_target_of_the_asterisk(url: str) -> None:
    up = _parse("canary", url)
    assert up.request_target(b"*", b"") == b"*"
    assert up.request_target(b"/*", b"") == up.prefix + b"/*"


def _gunicorn() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "2",
            "-b", "127.0.0.1:{port}", "--log-level", "warning",
            "tests.support.wsgi_apps:make_app()"]  # fmt: skip


def _uvicorn(http: str) -> list[str]:
    return uvicorn_command("tests.support.apps:make_router_app", "--http", http, factory=True)


SERVERS = {
    "h11": (_uvicorn("h11"), {}),
    "httptools": (_uvicorn("httptools"), {}),
    "h11-httpx": (_uvicorn("h11"), {"transport": "httpx"}),
    "httptools-httpx": (_uvicorn("httptools"), {"transport": "httpx"}),
    "gunicorn": (_gunicorn(), {}),
}


@pytest.fixture(scope="module", params=list(SERVERS))
def asterisk(request: pytest.FixtureRequest) -> Iterator[tuple[RecordingCanary, AppServer, str]]:
    command, extra = SERVERS[request.param]
    canary = RecordingCanary()
    url = f"http://127.0.0.1:{canary.port}/prefix"
    router = start_router("memory://", command=command, upstreams={"canary": url},
                          default_rules=[{"id": "all", "when": {"not": {"ip": ["0.0.0.0/32"]}}}],
                          **extra)  # fmt: skip
    try:
        yield canary, router, request.param
    finally:
        router.cleanup()
        canary.close()


def _send(port: int, request: bytes) -> bytes:
    try:
        head, _ = raw_request(port, request)
    except (StopIteration, OSError, ValueError):  # no Content-Length or the server hung up
        return b""
    return head


def test_options_asterisk_reaches_the_canary_as_asterisk(
    asterisk: tuple[RecordingCanary, AppServer, str],
) -> None:
    canary, router, _ = asterisk
    canary.lines.clear()
    head = _send(router.port, b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    wait_until(lambda: canary.lines, timeout=5, what="the canary's request")
    assert canary.lines == [b"OPTIONS * HTTP/1.1"]


@pytest.mark.parametrize(
    "line",
    [
        b"GET * HTTP/1.1",
        b"POST * HTTP/1.1",
        b"options * HTTP/1.1",
        b"OPTIONS  * HTTP/1.1",
        b"OPTIONS *?x=1 HTTP/1.1",
        b"OPTIONS *? HTTP/1.1",
        b"OPTIONS *# HTTP/1.1",
        b"OPTIONS ** HTTP/1.1",
        b"OPTIONS *x HTTP/1.1",
        b"OPTIONS %2A HTTP/1.1",
        b"TRACE * HTTP/1.1",
        b"CONNECT app.test:443 HTTP/1.1",
        b"OPTIONS app.test:80 HTTP/1.1",
    ],
)
def test_no_other_asterisk_target_reaches_the_canary(
    asterisk: tuple[RecordingCanary, AppServer, str], line: bytes
) -> None:
    # No wait after the answer: the router answers after forwarding (the canary records a
    # request before answering it) or after refusing it, so nothing is still on its way.
    canary, router, _ = asterisk
    canary.lines.clear()
    head = _send(router.port, line + b"\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n")
    # Anything forwarded must be exactly 'OPTIONS *' or a path under the prefix with no '*'
    # glued to it: '/prefix*' names a resource the client never asked about.
    for seen in canary.lines:
        target = seen.split(b" ")[1]
        assert target == b"*", (seen, head)
        assert seen.startswith(b"OPTIONS "), (seen, head)
    assert not head.startswith(b"HTTP/1.1 2") or canary.lines, head


def test_websocket_handshake_with_the_asterisk_is_not_forwarded(
    asterisk: tuple[RecordingCanary, AppServer, str],
) -> None:
    canary, router, _ = asterisk
    canary.lines.clear()
    head = _send(router.port, b"GET * HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    assert canary.lines == [], head


def test_options_for_the_whole_server_in_absolute_form(
    asterisk: tuple[RecordingCanary, AppServer, str],
) -> None:
    """RFC 9112 §3.2.4: ``OPTIONS http://host:port`` (no path) asks about the server and is
    forwarded by the last proxy as ``OPTIONS *``; as ``/prefix`` it asks about a resource."""
    canary, router, _ = asterisk
    canary.lines.clear()
    head = _send(router.port, b"OPTIONS http://app.test HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert canary.lines in ([], [b"OPTIONS * HTTP/1.1"]), (canary.lines, head)


# -- end to end: a canary writing late copies (tests/forward/test_partition.py) -------------
@pytest.fixture
def late_canary() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream(late_copies)
    yield upstream
    upstream.close()


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "%74oken",
    ],
)  # fmt: skip
def test_a_late_copy_never_reaches_a_user_with_another_query_token(
    late_canary: ScriptedUpstream, name: str
) -> None:
    options = {"upstreams": {"canary": late_canary.url}, "force_header": "X-Canary-Force",
               "timeout": TIMEOUT}  # fmt: skip
    router = start_router("memory://", **options)
    try:
        alice = ask(router.port, b"/alice?%s=alice" % name.encode(), b"same")
        assert b"the page of /alice" in alice
        bob = ask(router.port, b"/bob?%s=bob" % name.encode(), b"same")
        assert b"the page of /bob" in bob
        assert b"alice" not in bob, bob
    finally:
        router.cleanup()


def test_a_semicolon_separated_credential_counts() -> None:
    assert key(b"a=1;token=alice") != key(b"a=1;token=bob")


# -- 86d4b2e: the stable app's start message is copied before the tag and cookie ------------
@pytest.mark.anyio
@pytest.mark.parametrize("headers", [[(b"x-app", b"1")], ((b"x-app", b"1"),), None])
async def test_a_constant_start_message_is_never_changed(headers: Any) -> None:
    start: dict[str, Any] = {"type": "http.response.start", "status": 200}
    if headers is not None:
        start["headers"] = headers
    before = repr(start)

    async def stable(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": b"stable"})

    router = CanaryRouter(stable, canary_url="http://canary.invalid", tag_header="X-Version",
                          default_rules={"rules": []})  # fmt: skip
    transport = httpx.ASGITransport(app=router)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(3):
                response = await client.get("/")
                assert response.headers.get_list("x-version") == ["stable"]
    finally:
        await router.aclose()
    assert repr(start) == before


# -- 66429a2: decide_or_stable ----------------------------------------------------------------
class RaisesWithTheRequest(Node):
    """A condition bug whose message holds request bytes, as ``int(piece)`` did in the
    sticky cookie reader (ValueError: invalid literal for int() with base 10: '...')."""

    __slots__ = ()

    def evaluate(self, facts: Any, snapshot: Any, answers: Any, pending: Any) -> bool | None:
        value = facts.header("x-piece") or ""
        if value == "other-bug":
            raise KeyError("a different bug")
        return bool(int(value))


@pytest.mark.anyio
async def test_a_flood_of_distinct_messages_does_not_silence_a_new_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sys.modules["canary_mw.decide"]._LOGGED.clear()
    rules = RuleSet((Rule("boom", "canary", RaisesWithTheRequest(), {"id": "boom", "when": {}}),))

    async def stable(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stable"})

    router = CanaryRouter(stable, canary_url="http://canary.invalid", default_rules=rules)
    transport = httpx.ASGITransport(app=router)
    try:
        with caplog.at_level("ERROR", logger="canary_mw"):
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for i in range(150):
                    response = await client.get("/", headers={"x-piece": f"x{i}"})
                    assert response.text == "stable"
                caplog.clear()
                response = await client.get("/", headers={"x-piece": "other-bug"})
                assert response.text == "stable"
    finally:
        await router.aclose()
        sys.modules["canary_mw.decide"]._LOGGED.clear()
    assert any("raised KeyError" in r.getMessage() for r in caplog.records)


@pytest.fixture
def wsgiref_router() -> Iterator[tuple[RecordingCanary, int]]:
    """CanaryWSGI under wsgiref, a server that sets neither RAW_URI nor REQUEST_URI (as
    bjoern and others): the target is rebuilt from PATH_INFO."""
    canary = RecordingCanary()

    def stable(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "6")])
        return [b"stable"]

    router = CanaryWSGI(stable, canary_url=f"http://127.0.0.1:{canary.port}/prefix",
                        default_rules=[{"id": "all", "when": {"not": {"ip": ["0.0.0.0/32"]}}}])  # fmt: skip

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, router, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield canary, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        router.close()
        canary.close()


def test_wsgiref_options_asterisk_goes_as_asterisk(
    wsgiref_router: tuple[RecordingCanary, int],
) -> None:
    canary, port = wsgiref_router
    head = _send(port, b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b"200 OK"), head
    assert canary.lines == [b"OPTIONS * HTTP/1.1"]


@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE"])
def test_wsgiref_other_methods_with_the_asterisk_are_refused(
    wsgiref_router: tuple[RecordingCanary, int], method: bytes
) -> None:
    canary, port = wsgiref_router
    head = _send(port, method + b" * HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n")
    assert head.split(b" ")[1] == b"400", head  # refused before anything is forwarded
    assert canary.lines == []


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_an_absolute_form_target_keeps_its_query_token(
    late_canary: ScriptedUpstream, server: str
) -> None:
    """``GET http://shop/alice?token=alice``: the token is read from the query the server
    split off the absolute-form target, as from an origin-form one."""
    options = {"upstreams": {"canary": late_canary.url}, "force_header": "X-Canary-Force",
               "timeout": TIMEOUT}  # fmt: skip
    if server == "uvicorn":
        router = start_router("memory://", **options)
    else:
        router = start_router("memory://", command=_gunicorn(), **options)
    try:
        alice = ask(router.port, b"http://shop/alice?token=alice", b"same")
        assert b"the page of /alice" in alice
        bob = ask(router.port, b"/bob?token=bob", b"same")
        assert b"the page of /bob" in bob
        assert b"alice" not in bob, bob
        carol = ask(router.port, b"http://shop/carol?token=carol", b"same")
        assert b"the page of /carol" in carol
        assert b"bob" not in carol, carol
    finally:
        router.cleanup()


@pytest.mark.parametrize("transport", ["default", "httpx"])
def test_a_late_copy_stays_with_its_user_on_our_transport_only(
    late_canary: ScriptedUpstream, transport: str
) -> None:
    """httpx's own pool ignores ``canary_mw.partition``: tokens and cookies keep nobody apart
    there and Bob gets Alice's late page and cookie. docs/forwarding.md's warning (only the
    default transports are held to the invariants) covers it; shown here as the residual."""
    options = {"upstreams": {"canary": late_canary.url}, "force_header": "X-Canary-Force",
               "timeout": TIMEOUT, "transport": transport}  # fmt: skip
    router = start_router("memory://", **options)
    try:
        assert b"the page of /alice" in ask(router.port, b"/alice?token=alice", b"alice")
        bob = ask(router.port, b"/bob?token=bob", b"bob")
        if transport == "default":
            assert b"the page of /bob" in bob
            assert b"alice" not in bob, bob
        else:
            assert b"session=alice" in bob, bob
    finally:
        router.cleanup()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "method",
    [
        "OPTIONS",
        "GET",
    ],
)  # fmt: skip
async def test_an_asgi_server_without_raw_path_refuses_get_asterisk(method: str) -> None:
    canary = RecordingCanary()

    async def stable(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stable"})

    router = CanaryRouter(stable, canary_url=f"http://127.0.0.1:{canary.port}/prefix",
                          default_rules=[{"id": "all", "when": {"not": {"ip": ["0.0.0.0/32"]}}}])  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": "*", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"app.test")],
             "client": ("127.0.0.9", 5000), "server": ("127.0.0.1", 80)}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    try:
        await router(scope, receive, send)
    finally:
        await router.aclose()
        canary.close()
    if method == "OPTIONS":
        assert canary.lines == [b"OPTIONS * HTTP/1.1"]
    else:
        assert canary.lines == []
