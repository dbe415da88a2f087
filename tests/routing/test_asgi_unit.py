"""CanaryRouter in-process: configuration, lifespan, resources, loop guard, header policy."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from canary_mw import (
    DECISION_KEY,
    CanaryConfig,
    CanaryRouter,
    CanaryWSGI,
    ConfigurationError,
    EngineSettings,
    RuleError,
)
from canary_mw.stores import DEFAULT_LOOKUP_TIMEOUT, async_store_from_url, store_from_url

pytestmark = pytest.mark.anyio


async def stable(scope: Any, receive: Any, send: Any) -> None:
    decision = scope.get(DECISION_KEY)
    body = f"stable {decision.reason if decision else '-'}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


GOOD = {"canary_url": "http://canary.internal:8000"}


def respx_options() -> dict[str, Any]:
    """respx fakes upstreams inside httpx's own transport: routers under respx.mock get it."""
    return {**GOOD, "transport": httpx.AsyncHTTPTransport()}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "no upstream"),
        ({"canary_url": "ftp://x"}, "http:// or https://"),
        ({"canary_url": "http://"}, "invalid URL|with a host"),
        ({"canary_url": "http://x/?q=1"}, "query or fragment"),
        ({"upstreams": {"stable": "http://x"}}, "not 'stable'"),
        ({"upstreams": {"bad name": "http://x"}}, "is invalid"),
        ({"upstreams": ["http://x"]}, "map names to URLs"),
        ({**GOOD, "upstreams": {"canary": "http://other"}}, "disagree"),
        ({**GOOD, "trusted_proxies": "10.0.0.0/8"}, "must be a list"),
        ({**GOOD, "trusted_proxies": ["10.0.0.1/8"]}, "did you mean"),
        ({**GOOD, "tag_header": "X Canary"}, "header name"),
        ({**GOOD, "loop_header": ""}, "header name"),
        ({**GOOD, "force_header": ""}, "non-empty string"),
        ({**GOOD, "timeout": -1}, "httpx.Timeout"),
        ({**GOOD, "timeout": {"connect": 1, "reed": 2}}, "timeout keys"),
        ({**GOOD, "limits": 10}, "httpx.Limits"),
        ({**GOOD, "transport": object()}, "AsyncBaseTransport"),
        ({**GOOD, "store": 42}, "store must be a URL"),
        ({**GOOD, "store": "mysql://x"}, "unsupported store URL scheme"),
        ({**GOOD, "store": store_from_url("memory://")}, "store must be a URL"),
        ({**GOOD, "fallback": "yes"}, "True or False"),
        ({**GOOD, "lookup_timeout": 0}, "lookup_timeout"),
        ({**GOOD, "lookup_timeout": 0.1, "store": async_store_from_url("memory://")},
         r"pass it where the store is made, e.g. async_store_from_url\(url, lookup_timeout="),
        ({**GOOD, "engine_options": 3}, "EngineSettings"),
        ({**GOOD, "config": CanaryConfig(**GOOD)}, "not both"),
        ({**GOOD, "canary": "http://x"}, r"unknown option\(s\) \['canary'\]"),
        ({**GOOD, "engine_options": {"poll_intervall": 1}}, "unknown engine_options"),
        ({**GOOD, "engine_options": {"poll_interval": 0}}, "poll_interval must be"),
    ],
)  # fmt: skip
def test_invalid_configuration_is_refused_with_a_fix(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CanaryRouter(stable, **options)


async def test_one_config_object_serves_both_routers() -> None:
    config = CanaryConfig(
        **GOOD, force_header="X-Force", engine_options=EngineSettings(poll_interval=2.0)
    )
    router = CanaryRouter(stable, config=config)
    blocking = CanaryWSGI(lambda environ, start: [b""], config=config)
    assert router.config is config
    assert blocking.config is config
    assert router.engine.poll_interval == blocking.engine.poll_interval == 2.0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router)) as client:
        forced = await client.get("http://test/", headers={"X-Force": "never"})
    assert forced.text == "stable override-header"
    await router.aclose()
    blocking.close()


def test_a_config_is_frozen_and_takes_engine_options_as_a_dict() -> None:
    config = CanaryConfig(**GOOD, engine_options={"cache_ttl": 0.25})
    assert config.engine_settings == EngineSettings(cache_ttl=0.25)
    with pytest.raises(AttributeError):
        config.fallback = True  # type: ignore[misc]


def test_lookup_timeout_goes_to_the_store_built_from_the_url() -> None:
    router = CanaryRouter(stable, **GOOD, lookup_timeout=0.2)
    assert router.store.lookup_timeout == 0.2
    assert CanaryRouter(stable, **GOOD).store.lookup_timeout == DEFAULT_LOOKUP_TIMEOUT


def test_invalid_default_rules_name_the_rule() -> None:
    with pytest.raises(RuleError, match=r"rule 'x', field 'when\.ip\[0\]'"):
        CanaryRouter(stable, **GOOD, default_rules=[{"id": "x", "when": {"ip": ["nope"]}}])


def test_construction_does_no_io() -> None:
    # A Redis that does not exist: building the router must neither fail nor wait.
    router = CanaryRouter(stable, store="redis://127.0.0.1:9/0", **GOOD)
    assert router.engine.snapshot.loaded is False
    assert router._forwarder.owns_a_transport is False


def test_add_middleware_builds_the_router_with_its_options() -> None:
    # Starlette builds the middleware stack lazily, on the first request or lifespan: build it
    # here, so that the router is made (and its options checked) and can be looked at.
    app = Starlette()
    app.add_middleware(CanaryRouter, **GOOD, trusted_proxies=["10.0.0.0/8"])  # type: ignore[arg-type]
    stack = app.build_middleware_stack()
    routers = []
    while stack is not None:
        if isinstance(stack, CanaryRouter):
            routers.append(stack)
        stack = getattr(stack, "app", None)
    assert len(routers) == 1
    assert routers[0].config.trusted_proxies == ["10.0.0.0/8"]
    assert routers[0].config.is_trusted_peer("10.1.2.3")


def test_add_middleware_refuses_a_bad_option_when_starlette_builds_it() -> None:
    app = Starlette()
    app.add_middleware(CanaryRouter, **GOOD, trusted_proxies=["10.0.0.1/8"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="did you mean"):
        app.build_middleware_stack()


async def run_lifespan(app: Any) -> list[str]:
    events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[str] = []
    await events.put({"type": "lifespan.startup"})

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            await events.put({"type": "lifespan.shutdown"})

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, events.get, send)
    return sent


async def test_lifespan_loads_rules_at_startup_and_closes_at_shutdown() -> None:
    store = async_store_from_url("memory://lifespan")
    await store.add_ips("ips", ["203.0.113.1"])
    loaded_at_startup = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        loaded_at_startup.append(router.engine.snapshot.loaded)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    router = CanaryRouter(app, store=store, **GOOD)
    assert await run_lifespan(router) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert loaded_at_startup == [True]
    assert router.engine._tasks == []
    await router.aclose()  # a second close is harmless


async def test_aclose_twice_after_use() -> None:
    router = CanaryRouter(stable, **GOOD)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router)) as client:
        assert (await client.get("http://test/")).text == "stable no-match"
    router._forwarder.transport()  # create the forwarding transport
    assert router._forwarder.owns_a_transport
    await router.aclose()
    await router.aclose()
    assert router._forwarder.owns_a_transport is False


async def test_the_decision_is_in_the_scope_for_starlette_apps() -> None:
    async def page(request: Request) -> JSONResponse:
        decision = request.scope[DECISION_KEY]
        return JSONResponse({"target": decision.target, "reason": decision.reason})

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(CanaryRouter, **GOOD, force_header="X-Force")  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        response = await client.get("http://test/")
    assert response.json() == {"target": "stable", "reason": "no-match"}
    assert response.headers["x-canary-version"] == "stable"


async def test_tag_can_be_switched_off() -> None:
    router = CanaryRouter(stable, **GOOD, tag_header=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router)) as client:
        response = await client.get("http://test/")
    assert "x-canary-version" not in response.headers
    await router.aclose()


@respx.mock
async def test_a_request_forwarded_by_another_router_is_served_here() -> None:
    canary = respx.get("http://canary.internal:8000/").respond(200, text="canary")
    router = CanaryRouter(
        stable, **respx_options(), default_rules=[{"id": "all", "when": {"method": "GET"}}]
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router)) as client:
        routed = await client.get("http://test/")
        looped = await client.get("http://test/", headers={"X-Canary-Forwarded": "1"})
    assert routed.text == "canary"
    assert looped.text == "stable -"  # served locally, no decision, no second hop
    assert "x-canary-version" not in looped.headers  # the outer router tags it
    assert canary.call_count == 1
    await router.aclose()


@respx.mock
@pytest.mark.parametrize(
    ("preserve_host", "peer", "incoming", "expected"),
    [
        (True, "203.0.113.1", {}, {"host": "shop.example", "x-forwarded-proto": "http"}),
        (False, "203.0.113.1", {}, {"host": "canary.internal:8000"}),
        # X-Forwarded-Proto/Host from an untrusted peer are replaced by what we saw...
        (True, "203.0.113.1", {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"},
         {"x-forwarded-proto": "http", "x-forwarded-host": "shop.example"}),
        # ...and passed on from a trusted proxy
        (True, "10.0.0.9", {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"},
         {"x-forwarded-proto": "https", "x-forwarded-host": "shop.example"}),
        # X-Forwarded-For is appended to, as every proxy does
        (True, "10.0.0.9", {"X-Forwarded-For": "198.51.100.1"},
         {"x-forwarded-for": "198.51.100.1, 10.0.0.9"}),
    ],
)  # fmt: skip
async def test_forwarded_header_policy(
    preserve_host: bool, peer: str, incoming: dict[str, str], expected: dict[str, str]
) -> None:
    canary = respx.get("http://canary.internal:8000/p").respond(200, text="ok")
    router = CanaryRouter(
        stable, **respx_options(), preserve_host=preserve_host, trusted_proxies=["10.0.0.0/8"],
        default_rules=[{"id": "all", "when": {"method": "GET"}}],
    )  # fmt: skip
    transport = httpx.ASGITransport(app=router, client=(peer, 5555))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://shop.example/p", headers=incoming)
    assert response.text == "ok"
    sent = canary.calls.last.request.headers
    for name, value in expected.items():
        assert sent[name] == value
    await router.aclose()
