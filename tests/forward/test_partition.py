"""Pooled canary connections are kept per user (canary_mw/forward/partition.py).

A canary that writes a response twice, the copy arriving only after the next request went out
on the same connection, cannot be caught by any HTTP/1.1 client's reuse rule: the copy reads
as the next request's answer. The red team showed it handing Alice's page and session cookie
to Bob through every server and both transports. Keeping idle connections per user means
such a copy can only ever reach the user it belongs to. The canary here writes the late copy
deterministically: only once it has read the next request on the same connection.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator

import pytest

from canary_mw import CanaryConfig
from canary_mw.forward.partition import partition_key
from tests.support.routers import TRUSTED_PROXY, start_router
from tests.support.scripted import Upstream, answer, read_body, read_head, target
from tests.support.servers import AppServer

pytestmark = pytest.mark.slow

TIMEOUT = {"connect": 2, "read": 5, "write": 5, "pool": 1}


# -- the key ---------------------------------------------------------------------------------
BASE = [(b"host", b"shop"), (b"x-forwarded-for", b"203.0.113.7"), (b"accept", b"*/*")]


@pytest.mark.parametrize(
    ("other", "same"),
    [
        pytest.param([*BASE, (b"accept", b"text/html")], True, id="other headers do not count"),
        pytest.param(
            [(b"Host", b"shop"), (b"X-Forwarded-For", b"203.0.113.7")], True, id="name case"
        ),
        pytest.param([*BASE, (b"cookie", b"uid=bob")], False, id="a cookie"),
        pytest.param([*BASE, (b"authorization", b"Bearer x")], False, id="authorization"),
        pytest.param(
            [(b"host", b"shop"), (b"x-forwarded-for", b"203.0.113.8")], False, id="address"
        ),
        # Behind an X-Real-IP or Forwarded proxy, XFF ends with the proxy: the client is here.
        pytest.param([*BASE, (b"x-real-ip", b"198.51.100.1")], False, id="x-real-ip"),
        pytest.param([*BASE, (b"forwarded", b"for=198.51.100.1")], False, id="forwarded"),
        pytest.param([*BASE, (b"x-api-key", b"k")], False, id="x-api-key"),
        # Lengths are hashed: moving bytes from one header to another is another user.
        pytest.param([*BASE[:2], (b"cookie", b"a"), (b"authorization", b"b")], False, id="split 1"),
    ],
)
def test_the_key_names_who_is_asking(other: list[tuple[bytes, bytes]], same: bool) -> None:
    assert (partition_key(BASE) == partition_key(other)) is same


def test_identity_headers_named_in_the_options_count_too() -> None:
    alice, bob = [*BASE, (b"x-session", b"alice")], [*BASE, (b"X-Session", b"bob")]
    assert partition_key(alice) == partition_key(bob)  # not an identity header by default
    identity = CanaryConfig(canary_url="http://canary", identity_headers=["X-Session"]).identity
    assert partition_key(alice, identity) != partition_key(bob, identity)
    assert partition_key(BASE, identity) == partition_key(BASE)


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (b"", b"page=2", True),  # other parameters do not count
        (b"token=alice", b"token=alice&page=9", True),
        (b"token=alice", b"token=bob", False),
        (b"token=alice", b"Token=bob", False),  # names compared in lower case
        (b"token=alice", b"page=1&api_key=k&token=alice", False),
        (b"", b"token", False),  # present without a value is not absent
        (b"", b"tok=en", True),
    ],
)
def test_credentials_in_the_query_count(one: bytes, other: bytes, same: bool) -> None:
    assert (partition_key(BASE, query=one) == partition_key(BASE, query=other)) is same
    # A parameter never hashes as a header of the same name and value.
    assert partition_key(BASE, query=b"cookie=x") != partition_key([*BASE, (b"cookie", b"x")])
    identity = CanaryConfig(canary_url="http://canary", identity_query=["Ticket"]).query_identity
    assert partition_key(BASE, query=b"ticket=1", query_identity=identity) != partition_key(
        BASE, query=b"ticket=2", query_identity=identity
    )


def test_moving_bytes_between_headers_changes_the_key() -> None:
    one = [(b"cookie", b"ab"), (b"authorization", b"c")]
    two = [(b"cookie", b"a"), (b"authorization", b"bc")]
    assert partition_key(one) != partition_key(two)


# -- a canary that writes each answer again, late ---------------------------------------------
def page(path: bytes) -> bytes:
    return answer(b"the page of " + path, b"set-cookie: session=" + path[1:] + b"\r\n")


def late_copies(conn: socket.socket, srv: Upstream) -> None:
    """Answers each request, and writes the previous answer again when the next request on
    this connection has arrived: the copy is read as that request's answer."""
    buffer = bytearray()
    previous: bytes | None = None
    while head := read_head(conn, buffer):
        srv.heads.append(head)
        read_body(conn, buffer, head)
        if previous is not None:
            conn.sendall(previous)
        previous = page(target(head))
        conn.sendall(previous)


def ask(
    port: int, path: bytes, user: bytes, *, behind_proxy: bool = False, header: bytes = b""
) -> bytes:
    """GET ``path`` as ``user``, forced to the canary; the whole reply. ``user`` is a cookie,
    or with ``behind_proxy`` an address in X-Real-IP sent from the trusted proxy, or with
    ``header`` that header's value."""
    if header:
        who = header + b": " + user
    elif behind_proxy:
        who = b"X-Real-IP: 198.51.100.%d" % (sum(user) % 250)
    else:
        who = b"Cookie: uid=" + user
    request = (
        b"GET %s HTTP/1.1\r\nHost: shop\r\nX-Canary-Force: always\r\n%s\r\n"
        b"Connection: close\r\n\r\n" % (path, who)
    )
    source = (TRUSTED_PROXY if behind_proxy else "127.0.0.1", 0)
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=source) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.fixture
def canary() -> Iterator[Upstream]:
    upstream = Upstream(late_copies)
    yield upstream
    upstream.close()


def _gunicorn(options: dict[str, object]) -> AppServer:
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "2",
               "-b", "127.0.0.1:{port}", "--log-level", "warning", "tests.support.wsgi_apps:make_app()"]  # fmt: skip
    return AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()


@pytest.mark.parametrize("behind_proxy", [False, True], ids=["cookies", "x-real-ip proxy"])
@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_late_copy_never_reaches_another_user(
    canary: Upstream, server: str, behind_proxy: bool
) -> None:
    options: dict[str, object] = {"upstreams": {"canary": canary.url},
                                  "force_header": "X-Canary-Force", "timeout": TIMEOUT}  # fmt: skip
    if behind_proxy:
        # Users without cookies, told apart only by the address their proxy writes in
        # X-Real-IP: X-Forwarded-For ends with the proxy for all of them.
        options.update(trusted_proxies=[TRUSTED_PROXY], client_ip_headers=["x-real-ip"])
    if server == "uvicorn":
        router = start_router("memory://", **options)
    else:
        router = _gunicorn({"store": "memory://", **options})
    try:
        alice = ask(router.port, b"/alice", b"alice", behind_proxy=behind_proxy)
        assert b"the page of /alice" in alice
        for user in (b"bob", b"carol", b"dave"):
            reply = ask(router.port, b"/" + user, user, behind_proxy=behind_proxy)
            assert b"the page of /" + user in reply, reply
            assert b"alice" not in reply, reply
        # Alice's own next request may get her own late copy; never anyone else's page.
        again = ask(router.port, b"/alice-again", b"alice", behind_proxy=behind_proxy)
        assert b"the page of /alice" in again
        for other in (b"bob", b"carol", b"dave"):
            assert b"/" + other not in again
    finally:
        router.cleanup()


@pytest.mark.parametrize("named", [True, False], ids=["identity_headers", "not named"])
def test_users_told_apart_by_a_header_of_their_own(canary: Upstream, named: bool) -> None:
    """Users at one address, without cookies, told apart only by X-Session: with the header
    in ``identity_headers`` a late copy never reaches another of them. Not named, they
    share connections and Bob gets Alice's page: the residual docs/security.md names, shown
    here so the option is seen to be what makes the difference."""
    options: dict[str, object] = {"upstreams": {"canary": canary.url},
                                  "force_header": "X-Canary-Force", "timeout": TIMEOUT}  # fmt: skip
    if named:
        options["identity_headers"] = ["X-Session"]
    router = start_router("memory://", **options)
    try:
        assert b"the page of /alice" in ask(router.port, b"/alice", b"alice", header=b"X-Session")
        bob = ask(router.port, b"/bob", b"bob", header=b"X-Session")
        if named:
            assert b"the page of /bob" in bob
            assert b"alice" not in bob
        else:
            assert b"the page of /alice" in bob
    finally:
        router.cleanup()


@pytest.mark.parametrize(
    ("param", "identity_query", "apart"),
    [("token", None, True), ("Ticket", ["ticket"], True), ("ticket", None, False)],
    ids=["a known credential", "named in identity_query", "not named"],
)
def test_users_told_apart_by_a_credential_in_the_query(
    canary: Upstream, param: str, identity_query: list[str] | None, apart: bool
) -> None:
    """Users at one address with the same cookie, told apart only by a query parameter: a
    known credential name (``token``, ``api_key``...) or one named in ``identity_query``
    keeps their connections apart; another parameter does not, and Bob gets Alice's page."""
    options: dict[str, object] = {"upstreams": {"canary": canary.url},
                                  "force_header": "X-Canary-Force", "timeout": TIMEOUT}  # fmt: skip
    if identity_query is not None:
        options["identity_query"] = identity_query
    router = start_router("memory://", **options)
    try:
        name = param.encode()
        alice = ask(router.port, b"/alice?page=1&%s=alice" % name, b"same")
        assert b"the page of /alice" in alice
        bob = ask(router.port, b"/bob?%s=bob&page=1" % name, b"same")
        if apart:
            assert b"the page of /bob" in bob
            assert b"alice" not in bob
        else:
            assert b"the page of /alice" in bob
    finally:
        router.cleanup()
