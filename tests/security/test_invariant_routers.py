"""The forwarding invariant, property-based, through both routers in real server processes.

CanaryRouter under uvicorn (both of its HTTP parsers) and CanaryWSGI under gunicorn's
threaded worker each send every request to the canary, which is the scripted upstream
(tests/support/scripted_upstream.py) running in this test process. Generated waves of clients
(tests/support/invariant.py) connect to the router, one connection and one user each, and send
their requests through h11 (so what comes back is parsed strictly). Every client must get
the router's own 502/503/504, a broken connection, or exactly
the response the upstream produced for its id; the upstream must never see one client's
bytes in another's request.

One upstream and one router process per module parameter, shared by every example: the
router's pool carries connections from one example to the next, as in production.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import h11
import pytest
from hypothesis import given

from tests.support.invariant import (
    Client,
    Outcome,
    case,
    known_examples,
    register,
    settings_for,
    verdict,
    waves,
)
from tests.support.routers import start_router
from tests.support.scripted_upstream import Script, ScriptedUpstream, render
from tests.support.servers import AppServer, uvicorn_command

pytestmark = pytest.mark.slow

ALL_TO_CANARY = [{"id": "all", "when": {"path_prefix": "/"}, "target": "canary"}]
TIMEOUT = {"connect": 2, "read": 1, "write": 2, "pool": 2}
#: The router's own answers when forwarding fails. Never a 500 (the server's page for an
#: exception): test_a_failing_upstream_is_never_a_500 below pins the cases that were one.
ROUTER_ERRORS = (502, 503, 504)
CLIENT_TIMEOUT = 10.0  # seconds a client waits on the router: far above the router's own


def uvicorn_router(upstream: ScriptedUpstream, parser: str) -> AppServer:
    command = uvicorn_command("tests.support.apps:make_router_app", "--http", parser, factory=True)
    return start_router(
        "memory://",
        command=command,
        canary_url=upstream.url,
        default_rules=ALL_TO_CANARY,
        timeout=TIMEOUT,
        # Few connections, so each carries many exchanges (where one could leak into the next).
        limits={"max_connections": 4, "max_keepalive_connections": 4},
    )


def gunicorn_router(upstream: ScriptedUpstream) -> AppServer:
    command = [
        sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "4",
        "-b", "127.0.0.1:{port}", "--log-level", "warning", "tests.support.wsgi_apps:make_app()",
    ]  # fmt: skip
    options = {
        "store": "memory://",
        "canary_url": upstream.url,
        "default_rules": ALL_TO_CANARY,
        "timeout": TIMEOUT,
    }
    return AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


ROUTERS = ["uvicorn-h11", "uvicorn-httptools", "gunicorn-gthread"]


@pytest.fixture(scope="module", params=ROUTERS)
def router_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def router(router_kind: str, upstream: ScriptedUpstream) -> Iterator[AppServer]:
    if router_kind == "gunicorn-gthread":
        server = gunicorn_router(upstream)
    else:
        server = uvicorn_router(upstream, router_kind.partition("-")[2])
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def exchange(port: int, client: Client) -> Outcome:
    """One user's request on its own connection, sent and read through h11."""
    connection = h11.Connection(h11.CLIENT)
    headers = [
        ("host", "app.test"),
        ("x-req-id", client.rid),
        ("x-user", client.user),
        ("cookie", f"uid={client.user}"),
    ]
    has_body = client.method in ("POST", "PUT", "DELETE")
    if has_body:
        headers.append(
            ("transfer-encoding", "chunked")
            if client.chunked
            else ("content-length", str(client.body_size))
        )
    status, ids, body, abandoned = 0, (), bytearray(), False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wire = connection.send(
                h11.Request(method=client.method, target=f"/r/{client.rid}", headers=headers)
            )
            for piece in client.pieces() if has_body else []:
                wire += connection.send(h11.Data(data=piece))
                sock.sendall(wire)
                wire = b""
                if client.pause:
                    time.sleep(client.pause)
            sock.sendall(wire + connection.send(h11.EndOfMessage()))
            while True:
                if status and client.abandon is not None and len(body) >= client.abandon:
                    abandoned = True  # the client leaves: closing with unread bytes resets
                    break
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    ids = tuple(bytes(v) for n, v in event.headers.raw_items() if n == b"x-req-id")
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    except (OSError, h11.ProtocolError) as exc:  # a broken connection: an allowed outcome
        return Outcome(error=f"{type(exc).__name__}: {exc}")
    if not status:
        return Outcome(error="the router closed the connection unanswered")
    return Outcome(status=status, ids=ids, body=bytes(body), abandoned=abandoned)


@settings_for(300)
@given(plan=waves())
@known_examples
def test_router_keeps_every_exchange_apart(
    plan: list[list[Client]],
    upstream: ScriptedUpstream,
    router: AppServer,
    threads: ThreadPoolExecutor,
) -> None:
    since = register(upstream, plan)
    results: list[tuple[Client, Outcome]] = []
    for wave in plan:
        futures = [threads.submit(exchange, router.port, client) for client in wave]
        results.extend(zip(wave, [f.result(timeout=60) for f in futures], strict=True))
    verdict(upstream, results, since, error_statuses=ROUTER_ERRORS)


# -- the router's own answers ------------------------------------------------------------------
def closed_mid_upload(rid: str) -> Client:
    """The upstream answers after the head and closes while a chunked body still streams."""
    return case(rid, "POST", 10, chunked=True, pause=0.02, early=0, version="1.0")


def cut_before_the_first_body_byte(rid: str) -> Client:
    """The upstream's head arrives whole, then the connection drops inside the first chunk's
    size line: not one byte of body."""
    script = Script(framing="chunked", body_size=100)
    head = render(script, rid, "GET").data.index(b"\r\n\r\n") + 4
    return Client(rid, "GET", 0, False, 1, 0.0, dataclasses.replace(script, cut=head + 1))


#: Upstream failures the router must turn into 502 (or a broken connection), never a 500.
FAILURES = {
    "closed-mid-upload": closed_mid_upload,
    "cut-before-body": cut_before_the_first_body_byte,
}
#: (router, failure) -> why it is a 500 today. Remove an entry when its fix lands (strict).
KNOWN_500: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_upstream_is_never_a_500(
    request: pytest.FixtureRequest,
    failure: str,
    upstream: ScriptedUpstream,
    router_kind: str,
    router: AppServer,
) -> None:
    reason = KNOWN_500.get((router_kind, failure))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    outcomes = []
    for attempt in range(3):  # the same answer each time: it is not a race
        client = FAILURES[failure](f"ex-{failure}-{router_kind}-{attempt}")
        upstream.expect(client.rid, client.sent, client.script)
        outcomes.append(exchange(router.port, client))
    statuses = [outcome.status for outcome in outcomes if outcome.error is None]
    assert 500 not in statuses, f"the router answered {statuses} (0: a broken connection)"
