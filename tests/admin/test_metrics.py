"""Metrics: after a known mix of requests the counters match exactly, for ASGI and WSGI."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.test import Client

from canary_mw import CanaryRouter, CanaryWSGI
from canary_mw.metrics import Metrics, metrics_asgi_app

RULES = [
    {"id": "to-canary", "when": {"header": "X-To", "equals": "canary"}},
    {"id": "to-dead", "when": {"header": "X-To", "equals": "dead"}, "target": "dead"},
]
UPSTREAMS = {"canary": "http://canary.internal", "dead": "http://dead.internal"}
# (headers, method, how many): 6 stable, 4 canary 200, 1 canary 503, 2 dead GET, 1 dead POST
MIX = [({}, "GET", 6), ({"X-To": "canary"}, "GET", 4), ({"X-To": "canary", "X-Fail": "1"}, "GET", 1),
       ({"X-To": "dead"}, "GET", 2), ({"X-To": "dead"}, "POST", 1)]  # fmt: skip


async def asgi_stable(scope: Any, receive: Any, send: Any) -> None:
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"stable"})


def wsgi_stable(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"stable"]


def fake_upstreams() -> None:
    respx.get("http://canary.internal/", headers={"X-Fail": "1"}).respond(503)
    respx.get("http://canary.internal/").respond(200, text="canary")
    respx.route(host="dead.internal").mock(side_effect=httpx.ConnectError("refused"))


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def check(registry: CollectorRegistry) -> None:
    assert value(registry, "canary_mw_requests_total", target="stable", reason="no-match") == 6
    assert value(registry, "canary_mw_requests_total", target="canary", reason="rule") == 5
    assert value(registry, "canary_mw_requests_total", target="stable", reason="fallback") == 2
    assert value(registry, "canary_mw_requests_total", target="dead", reason="rule") == 1
    assert value(registry, "canary_mw_responses_total", target="stable", status="2xx") == 8
    assert value(registry, "canary_mw_responses_total", target="canary", status="2xx") == 4
    assert value(registry, "canary_mw_responses_total", target="canary", status="5xx") == 1
    assert value(registry, "canary_mw_responses_total", target="dead", status="5xx") == 1
    assert value(registry, "canary_mw_upstream_errors_total", upstream="dead", error="refused") == 3
    assert value(registry, "canary_mw_fallbacks_total", upstream="dead") == 2
    assert value(registry, "canary_mw_request_duration_seconds_count", target="stable") == 8
    assert value(registry, "canary_mw_request_duration_seconds_count", target="canary") == 5
    assert value(registry, "canary_mw_store_errors_total", operation="lookup") == 0
    assert value(registry, "canary_mw_store_breaker_open") == 0


@respx.mock
@pytest.mark.anyio
async def test_asgi_counters_match_exactly() -> None:
    fake_upstreams()
    registry = CollectorRegistry()
    # respx fakes the upstreams inside httpx's own transport, so the router gets that one.
    router = CanaryRouter(asgi_stable, upstreams=UPSTREAMS, default_rules=RULES, fallback=True,
                          metrics=Metrics(registry=registry),
                          transport=httpx.AsyncHTTPTransport())  # fmt: skip
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=router), base_url="http://t"
    ) as client:
        for headers, method, count in MIX:
            for _ in range(count):
                await client.request(method, "/", headers=headers)
    check(registry)
    assert b"canary_mw_requests_total" in generate_latest(registry)
    await router.aclose()


@respx.mock
def test_wsgi_counters_match_exactly() -> None:
    fake_upstreams()
    registry = CollectorRegistry()
    # respx fakes the upstreams inside httpx's own blocking transport, so the router gets it.
    router = CanaryWSGI(wsgi_stable, upstreams=UPSTREAMS, default_rules=RULES, fallback=True,
                        metrics=Metrics(registry=registry),
                        transport=httpx.HTTPTransport())  # fmt: skip
    client = Client(router)
    for headers, method, count in MIX:
        for _ in range(count):
            response = client.open("/", method=method, headers=headers)
            response.close()  # the server's close(): when WSGI requests are counted
    check(registry)
    router.close()


@pytest.mark.anyio
async def test_the_metrics_endpoint_serves_them() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry)
    metrics.request("stable", "no-match", 200, 0.003)
    app = metrics_asgi_app(registry)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://m"
    ) as client:
        text = (await client.get("/")).text
    assert 'canary_mw_requests_total{reason="no-match",target="stable"} 1.0' in text
    assert 'canary_mw_request_duration_seconds_bucket{le="0.005",target="stable"} 1.0' in text


def test_a_scrape_from_another_thread_sees_every_threads_counts() -> None:
    # WSGI servers count in their request threads; Prometheus is served by yet another one.
    metrics = Metrics(registry=None)

    def serve(target: str) -> None:
        for _ in range(3):
            metrics.request(target, "rule", 200, 0.003)
        metrics.fallback("canary")

    workers = [threading.Thread(target=serve, args=(t,)) for t in ("stable", "canary", "stable")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counters, durations = metrics.totals()
    assert counters["requests"] == {("stable", "rule"): 6, ("canary", "rule"): 3}
    assert counters["fallbacks"] == {"canary": 3}
    assert sum(durations["stable"][:-1]) == 6
