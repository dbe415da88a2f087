from __future__ import annotations

from typing import Any

import pytest

from canary_mw.clientip import ClientIPResolver
from canary_mw.facts import ASGIFacts, WSGIFacts, cookie_value, parse_cookie_header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; b=2", {"a": "1", "b": "2"}),
        ("a=1;b=2", {"a": "1", "b": "2"}),
        ('uid="42"', {"uid": "42"}),
        ("uid=1; uid=2", {"uid": "1"}),
        ("junk; a=1; =x; b", {"a": "1"}),
        ("a=x=y", {"a": "x=y"}),
        ("a=", {"a": ""}),
        ("ü=ä", {"ü": "ä"}),
        ("", {}),
    ],
)
def test_cookie_header(header: str, expected: dict[str, str]) -> None:
    assert parse_cookie_header(header) == expected
    for name, value in expected.items():  # the one-name fast path agrees with the parser
        assert cookie_value(header, name) == value
    assert cookie_value(header, "absent") is None


def test_cookie_fast_path_matches_the_parser_on_random_headers() -> None:
    import random

    rng = random.Random(7)
    alphabet = ["a", "b", "uid", " ", ";", "=", '"', "x", "1", "\t", "é"]
    for _ in range(5000):
        header = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        parsed = parse_cookie_header(header)
        for name in ("a", "b", "uid", "x", "é"):
            assert cookie_value(header, name) == parsed.get(name), (header, name)


def asgi_scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/api/v2/items",
        "query_string": b"user=42&user=43&flag=&q=a%20b",
        "headers": [
            (b"host", b"Shop.Example.com:8443"),
            (b"x-tester", b"yes"),
            (b"cookie", b"uid=7"),
            (b"cookie", b"vip=1"),
            (b"accept", b"text/html"),
            (b"accept", b"application/json"),
        ],
        "client": ("203.0.113.9", 51000),
        "server": ("10.0.0.5", 8000),
    }
    scope.update(overrides)
    return scope


def wsgi_environ(**overrides: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/v2/items",
        "QUERY_STRING": "user=42&user=43&flag=&q=a%20b",
        "HTTP_HOST": "Shop.Example.com:8443",
        "HTTP_X_TESTER": "yes",
        "HTTP_COOKIE": "uid=7; vip=1",
        "HTTP_ACCEPT": "text/html, application/json",
        "REMOTE_ADDR": "203.0.113.9",
        "SERVER_NAME": "10.0.0.5",
    }
    environ.update(overrides)
    return environ


@pytest.fixture(params=["asgi", "wsgi"])
def make_facts(request: pytest.FixtureRequest) -> Any:
    def build(resolver: ClientIPResolver | None = None, **overrides: Any) -> Any:
        args = (resolver,) if resolver else ()
        if request.param == "asgi":
            return ASGIFacts(asgi_scope(**overrides), *args)
        return WSGIFacts(wsgi_environ(**overrides), *args)

    return build


def test_fields(make_facts: Any) -> None:
    facts = make_facts()
    assert facts.method == "POST"
    assert facts.path == "/api/v2/items"
    assert facts.host == "shop.example.com"
    assert facts.header("x-tester") == "yes"
    assert facts.header("accept") == "text/html, application/json"
    assert facts.header("missing") is None
    assert facts.cookie("uid") == "7"
    assert facts.cookie("vip") == "1"
    assert facts.cookie("none") is None
    assert facts.query("user") == "42"
    assert facts.query("flag") == ""
    assert facts.query("q") == "a b"
    assert facts.query("none") is None
    assert str(facts.client_ip) == "203.0.113.9"


def test_trusted_proxy_header(make_facts: Any) -> None:
    resolver = ClientIPResolver(["203.0.113.0/24"])
    facts = make_facts(resolver)
    assert str(facts.client_ip) == "203.0.113.9"  # no X-Forwarded-For: the peer
    asgi = ASGIFacts(asgi_scope(headers=[(b"x-forwarded-for", b"198.51.100.3")]), resolver)
    wsgi = WSGIFacts(wsgi_environ(HTTP_X_FORWARDED_FOR="198.51.100.3"), resolver)
    assert str(asgi.client_ip) == str(wsgi.client_ip) == "198.51.100.3"


def test_host_fallbacks() -> None:
    assert ASGIFacts(asgi_scope(headers=[])).host == "10.0.0.5"
    assert ASGIFacts(asgi_scope(headers=[(b"host", b"[2001:DB8::1]:80")])).host == "2001:db8::1"
    environ = wsgi_environ()
    del environ["HTTP_HOST"]
    assert WSGIFacts(environ).host == "10.0.0.5"


def test_wsgi_path_is_decoded_utf8_and_includes_script_name() -> None:
    raw = "/ünï".encode().decode("latin-1")  # how PEP 3333 servers hand it over
    facts = WSGIFacts(wsgi_environ(SCRIPT_NAME="/app", PATH_INFO=raw))
    assert facts.path == "/app/ünï"


def test_websocket_scope_has_get_method() -> None:
    scope = asgi_scope(type="websocket")
    del scope["method"]
    assert ASGIFacts(scope).method == "GET"


def test_lazy_parsing_touches_only_what_is_asked() -> None:
    class CountingHeaders(list):  # type: ignore[type-arg]
        iterations = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            CountingHeaders.iterations += 1
            return super().__iter__()

    facts = ASGIFacts(asgi_scope(headers=CountingHeaders(asgi_scope()["headers"])))
    assert str(facts.client_ip) == "203.0.113.9"
    assert CountingHeaders.iterations == 0  # peer only: headers never parsed
    facts.cookie("uid")
    built = CountingHeaders.iterations
    assert built >= 1
    facts.header("x-tester")
    facts.cookie("vip")
    facts.header("accept")
    assert CountingHeaders.iterations == built  # built once, then reused


# -- two authorities: the router refuses them (RFC 9112 §3.2) -------------------------------
@pytest.mark.parametrize(
    ("target", "hosts", "conflict"),
    [
        (b"/p", [b"app.test"], False),
        (b"/p", [], False),
        (b"*", [b"app.test"], False),
        (b"/p", [b"app.test", b"other.test"], True),
        (b"/p", [b"app.test", b"app.test"], True),  # more than one line, even the same
        (b"http://app.test/p", [b"app.test"], False),
        (b"http://APP.test", [b"app.TEST"], False),
        (b"http://app.test:8080/p", [b"app.test:8080"], False),
        (b"http://other.test/p", [b"app.test"], True),
        (b"http://app.test:1/p", [b"app.test"], True),
        (b"http://user@app.test/p", [b"app.test"], True),
        (b"http://app.test/p", [], True),
        (b"@127.0.0.1:6379/internal", [b"app.test"], True),  # neither a path nor a URL
        (b"@127.0.0.1:6379/internal", [], True),
        (b"127.0.0.1:6379", [b"127.0.0.1:6379"], True),
    ],
)
def test_authority_conflict(target: bytes, hosts: list[bytes], conflict: bool) -> None:
    headers = [(b"x-a", b"1"), *((b"host", host) for host in hosts), (b"x-a", b"2")]
    method = "OPTIONS" if target == b"*" else "POST"
    query = "" if target == b"*" else "q=1"  # the asterisk form has no query
    scope = asgi_scope(raw_path=target, headers=headers, method=method, query_string=query.encode())
    assert ASGIFacts(scope).authority_conflict is conflict
    environ = wsgi_environ(REQUEST_URI=target.decode(), REQUEST_METHOD=method, QUERY_STRING=query)
    del environ["HTTP_HOST"]
    if hosts:  # WSGI servers join repeated lines with a comma
        environ["HTTP_HOST"] = ",".join(host.decode() for host in hosts)
    assert WSGIFacts(environ).authority_conflict is conflict


@pytest.mark.parametrize(
    ("method", "query"), [("GET", ""), ("POST", ""), ("DELETE", ""), ("options", ""),
                          ("OPTIONS", "x=1")],
)  # fmt: skip
def test_the_asterisk_form_is_options_alone_without_a_query(method: str, query: str) -> None:
    """RFC 9112 §3.2.4: ``*`` is a target only for a server-wide OPTIONS, with no query;
    anything else names nothing, and is refused rather than forwarded as some path. Servers
    that keep no raw target (an ASGI scope without raw_path, wsgiref) are read the same."""
    scope = asgi_scope(raw_path=b"*", path="*", method=method, query_string=query.encode(),
                       headers=[(b"host", b"app.test")])  # fmt: skip
    assert ASGIFacts(scope).authority_conflict is True
    del scope["raw_path"]
    assert ASGIFacts(scope).authority_conflict is True
    environ = wsgi_environ(REQUEST_URI="*", REQUEST_METHOD=method, QUERY_STRING=query)
    assert WSGIFacts(environ).authority_conflict is True
    del environ["REQUEST_URI"]
    environ.update(PATH_INFO="*", SCRIPT_NAME="")
    assert WSGIFacts(environ).authority_conflict is True


# -- linear work on repeated headers --------------------------------------------------------
def _best_time(work: Any, repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs, in this process's CPU time: other processes on a busy
    machine do not count, and noise only ever adds time."""
    import gc
    import time

    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
    finally:
        gc.enable()
    return best


def _joined_header(count: int) -> Any:
    pairs = [(b"host", b"app.test")] + [(b"x-a", b"1")] * count
    return lambda: ASGIFacts(asgi_scope(headers=pairs)).header("x-a")


def _client_ip(count: int) -> Any:
    resolver = ClientIPResolver(["10.0.0.0/8"])
    pairs = [(b"x-forwarded-for", b"10.0.0.9")] * count
    scope = asgi_scope(headers=pairs, client=("10.0.0.1", 5000))
    return lambda: ASGIFacts(scope, resolver).client_ip


def _forwarded_headers(count: int) -> Any:
    from canary_mw.forward.headers import request_headers

    pairs = [(b"x-forwarded-for", b"10.0.0.9")] * count + [(b"x-a", b"1")] * count
    return lambda: request_headers(
        pairs, client=b"10.0.0.1", scheme=b"http", host=None, default_host=b"canary",
        trusted_peer=True,
    )  # fmt: skip


@pytest.mark.parametrize("build", [_joined_header, _client_ip, _forwarded_headers])
def test_repeated_headers_cost_linear_time(build: Any) -> None:
    """100,000 repeats of one header cost about 100x what 1,000 do when the work is linear
    and 10,000x when it is quadratic (joining as values come copies the whole value again for
    each one). Both sizes are timed in this run, in CPU time, so the bound (1,000x, a factor
    of ten from either) does not depend on how fast or busy the machine is; the fastest of
    five runs of each is compared."""
    small, large = _best_time(build(1_000)), _best_time(build(100_000))
    assert large < 1000 * small, f"1k repeats: {small * 1e3:.2f} ms, 100k: {large * 1e3:.1f} ms"
    assert build(3)() is not None
