"""CanaryConfig and compose (config.py), EngineSettings (engine/settings.py): the options are
declared and validated once, and both routers refuse the same mistakes with the same words."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import httpx
import pytest

from canary_mw import (
    AsyncEngine,
    AsyncStore,
    CanaryConfig,
    CanaryRouter,
    CanaryWSGI,
    ConfigurationError,
    Engine,
    EngineSettings,
    Store,
    store_from_url,
)
from canary_mw.config import ASYNC, BLOCKING, CONFIG_OPTIONS, compose
from canary_mw.engine import ENGINE_OPTIONS
from canary_mw.forward.asgi_http import AsyncHTTPForwarder
from canary_mw.forward.wsgi_http import SyncHTTPForwarder

GOOD = {"canary_url": "http://canary.internal:8000"}


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    raise AssertionError("not called")


ROUTERS = [
    pytest.param(lambda **options: CanaryRouter(asgi_app, **options), id="CanaryRouter"),
    pytest.param(lambda **options: CanaryWSGI(wsgi_app, **options), id="CanaryWSGI"),
    pytest.param(CanaryConfig, id="CanaryConfig"),
]


@pytest.mark.parametrize("make", ROUTERS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "no upstream"),
        ({**GOOD, "tag_header": "X Canary"}, "header name"),
        ({**GOOD, "tag_header": "Trailers"}, "tag_header 'Trailers' is a hop-by-hop or framing header"),
        ({**GOOD, "loop_header": "Connection"}, "loop_header 'Connection' is a hop-by-hop"),
        ({**GOOD, "loop_header": "Content-Length"}, "hop-by-hop or framing header"),
        ({**GOOD, "timeout": "soon"}, "httpx.Timeout"),
        ({**GOOD, "max_body_size": 0}, "positive number of bytes"),
        ({**GOOD, "metrics": "yes"}, "True, False or a Metrics"),
        ({**GOOD, "health": {"path": "/"}}, "HealthCheck"),
        ({**GOOD, "preserve_host": 1}, "True or False"),
        ({**GOOD, "store": "mysql://x"}, "unsupported store URL scheme"),
        ({**GOOD, "lookup_timeout": 61}, "lookup_timeout"),
        ({**GOOD, "engine_options": {"cache_size": -1}}, "cache_size must be an integer >= 0"),
        ({**GOOD, "engine_options": {"nope": 1}}, r"unknown engine_options \['nope'\]"),
        ({**GOOD, "transport": "h11"}, "httpx.AsyncBaseTransport .* or an httpx.BaseTransport"),
        ({**GOOD, "identity_headers": "X-Session"}, r"a list of header names such as \['X-Session-Token'\]"),
        ({**GOOD, "identity_headers": ["X Session"]}, "identity_headers must be a header name"),
    ],
)  # fmt: skip
def test_both_routers_and_the_config_refuse_the_same_mistakes(
    make: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make(**options)


def test_the_options_are_the_config_fields_and_nothing_else() -> None:
    declared = {field.name for field in fields(CanaryConfig) if field.init}
    assert declared == CONFIG_OPTIONS
    assert {"store", "canary_url", "engine_options", "lookup_timeout", "health"} <= declared
    assert {field.name for field in fields(EngineSettings)} == ENGINE_OPTIONS


@pytest.mark.parametrize(
    ("side", "store_kind", "engine_kind", "forwarder_kind"),
    [
        (ASYNC, AsyncStore, AsyncEngine, AsyncHTTPForwarder),
        (BLOCKING, Store, Engine, SyncHTTPForwarder),
    ],
    ids=["async", "blocking"],
)
def test_compose_builds_each_sides_parts(
    side: Any, store_kind: type, engine_kind: type, forwarder_kind: type
) -> None:
    config = CanaryConfig(**GOOD, engine_options={"poll_interval": 3.0}, metrics=False)
    parts = compose(config, side)
    assert isinstance(parts.store, store_kind)
    assert parts.owns_store  # built from a URL: the router closes it
    assert isinstance(parts.engine, engine_kind)
    assert parts.engine.settings == EngineSettings(poll_interval=3.0)
    assert isinstance(parts.forwarder, forwarder_kind)
    assert parts.forwarder.owns_a_transport is False  # made on first use, in its loop/process
    assert (parts.metrics, parts.health, parts.checker) == (None, None, None)


def test_a_store_object_of_the_other_side_is_refused_at_compose() -> None:
    config = CanaryConfig(**GOOD, store=store_from_url("memory://"))
    with pytest.raises(ConfigurationError, match=r"AsyncStore from async_store_from_url\(\)"):
        compose(config, ASYNC)


def test_a_transport_of_the_other_side_is_refused_at_compose() -> None:
    config = CanaryConfig(**GOOD, transport=httpx.HTTPTransport())
    with pytest.raises(ConfigurationError, match=r"httpx\.AsyncBaseTransport for CanaryRouter"):
        compose(config, ASYNC)
    assert compose(config, BLOCKING).forwarder.transport() is config.transport


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poll_interval": 0}, "poll_interval must be > 0"),
        ({"cache_ttl": -1}, "cache_ttl must be >= 0"),
        ({"breaker_threshold": 0}, "breaker_threshold must be an integer >= 1"),
        ({"breaker_reset": "1"}, "breaker_reset must be a number of seconds"),
        ({"first_load_wait": True}, "first_load_wait must be a number of seconds"),
    ],
)
def test_engine_settings_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        EngineSettings(**options)


def test_an_engine_takes_settings_or_their_fields_not_both() -> None:
    store = store_from_url("memory://")
    assert Engine(store, cache_ttl=0.1).settings == EngineSettings(cache_ttl=0.1)
    assert Engine(store, settings=EngineSettings(cache_ttl=0.2)).cache.ttl == 0.2
    with pytest.raises(ConfigurationError, match="not both"):
        Engine(store, settings=EngineSettings(), cache_ttl=0.1)
    with pytest.raises(ConfigurationError, match=r"unknown engine options \['cache'\]"):
        Engine(store, cache=1)
