"""CanaryWSGI in-process: configuration, ProxyFix order, loop guard, close()."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client

from canary_mw import DECISION_ENVIRON_KEY, CanaryWSGI, ConfigurationError
from canary_mw.stores import async_store_from_url


def stable(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    decision = environ.get(DECISION_ENVIRON_KEY)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"stable {decision.reason if decision else '-'}".encode()]


GOOD = {"canary_url": "http://canary.internal:8000"}


def faked(**options: Any) -> dict[str, Any]:
    """respx fakes upstreams inside httpx's own blocking transport; the default is ours."""
    return {**GOOD, "transport": httpx.HTTPTransport(), **options}


OFFICE = [{"id": "office", "when": {"ip": ["203.0.113.0/24"]}}]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "no upstream"),
        ({**GOOD, "store": async_store_from_url("memory://")}, "store must be a URL"),
        ({**GOOD, "transport": httpx.AsyncHTTPTransport()}, "httpx.BaseTransport"),
        ({**GOOD, "engine_options": {"nope": 1}}, "unknown engine_options"),
        ({**GOOD, "trusted_proxies": ["x"]}, "not an IP address"),
    ],
)
def test_invalid_configuration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CanaryWSGI(stable, **options)


def test_wraps_only_callables() -> None:
    with pytest.raises(ConfigurationError, match="WSGI callable"):
        CanaryWSGI("app", **GOOD)  # type: ignore[arg-type]


@respx.mock
def test_proxyfix_outside_routes_on_the_client_address() -> None:
    respx.get("http://canary.internal:8000/").respond(200, text="canary")
    router = CanaryWSGI(stable, **faked(default_rules=OFFICE))
    outside = Client(ProxyFix(router, x_for=1))
    environ = {"REMOTE_ADDR": "10.0.0.1"}
    response = outside.get("/", headers={"X-Forwarded-For": "203.0.113.5"}, environ_base=environ)
    assert response.text == "canary"  # ProxyFix gave CanaryWSGI the client's address
    router.close()


@respx.mock
def test_proxyfix_inside_sees_only_the_proxy() -> None:
    respx.get("http://canary.internal:8000/").respond(200, text="canary")
    router = CanaryWSGI(ProxyFix(stable, x_for=1), **faked(default_rules=OFFICE))
    inside = Client(router)
    environ = {"REMOTE_ADDR": "10.0.0.1"}
    response = inside.get("/", headers={"X-Forwarded-For": "203.0.113.5"}, environ_base=environ)
    assert response.text == "stable no-match"  # routed on 10.0.0.1: the documented pitfall
    trusted = CanaryWSGI(stable, **faked(default_rules=OFFICE, trusted_proxies=["10.0.0.0/8"]))
    response = Client(trusted).get(
        "/", headers={"X-Forwarded-For": "203.0.113.5"}, environ_base=environ
    )
    assert response.text == "canary"  # the alternative: trust the proxy in CanaryWSGI itself
    router.close()
    trusted.close()


@respx.mock
def test_loop_guard_and_tag() -> None:
    canary = respx.get("http://canary.internal:8000/").respond(200, text="canary")
    router = CanaryWSGI(stable, **faked(default_rules=[{"id": "all", "when": {"method": "GET"}}]))
    client = Client(router)
    forwarded = client.get("/")
    assert (forwarded.text, forwarded.headers["X-Canary-Version"]) == ("canary", "canary")
    sent = canary.calls.last.request.headers
    assert sent["x-canary-forwarded"] == "1"
    looped = client.get("/", headers={"X-Canary-Forwarded": "1"})
    assert looped.text == "stable -"
    assert "X-Canary-Version" not in looped.headers
    router.close()
    router.close()  # twice is fine


@respx.mock
def test_a_failed_upstream_is_logged_with_the_path_as_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    respx.route(host="canary.internal").mock(side_effect=httpx.ConnectError("refused"))
    router = CanaryWSGI(stable, **faked(default_rules=[{"id": "all", "when": {"method": "GET"}}]))
    with caplog.at_level("WARNING", logger="canary_mw.forward"):
        response = Client(router).get("/shop/cart?x=1")
    assert response.status_code == 502
    assert "failed before responding to GET /shop/cart?x=1: ConnectError" in caplog.text
    router.close()
