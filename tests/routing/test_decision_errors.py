"""A decision that raises serves stable: whatever a request or the store's data hits in the
rules, the router answers (reason ``error``) and logs the failure once, never a 500.

The failure is injected as a condition that raises, standing for a bug not found yet (the
sticky cookie's reader raised ValueError twice before a property test caught it)."""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest

from canary_mw import CanaryRouter, CanaryWSGI
from canary_mw.conditions import Node
from canary_mw.rules import Rule, RuleSet


class Raises(Node):
    __slots__ = ()

    def evaluate(self, facts: Any, snapshot: Any, answers: Any, pending: Any) -> bool | None:
        raise ValueError(f"cookie {facts.cookie('uid')}")  # a message quoting the request


RULES = RuleSet((Rule("boom", "canary", Raises(), {"id": "boom", "when": {}}),))
seen: list[Any] = []


async def stable_asgi(scope: Any, receive: Any, send: Any) -> None:
    seen.append(scope["canary_mw.decision"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"stable"})


def stable_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    seen.append(environ["canary_mw.decision"])
    start_response("200 OK", [])
    return [b"stable"]


@pytest.mark.anyio
async def test_the_asgi_router_serves_stable_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen.clear()
    sys.modules["canary_mw.decide"]._LOGGED.clear()  # what earlier tests logged
    router = CanaryRouter(stable_asgi, canary_url="http://canary.invalid", default_rules=RULES)
    transport = httpx.ASGITransport(app=router)
    with caplog.at_level("ERROR", logger="canary_mw"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for uid in ("secret-a", "secret-b", "secret-c"):
                response = await client.get("/", headers={"cookie": f"uid={uid}"})
                assert (response.status_code, response.text) == (200, "stable")
    await router.aclose()
    assert [(d.target, d.reason) for d in seen] == [("stable", "error")] * 3
    logged = [r for r in caplog.records if "deciding a request raised" in r.getMessage()]
    assert len(logged) == 1  # once per place that raises, with the frames that led there
    message = logged[0].getMessage()
    assert "ValueError" in message
    assert "test_decision_errors.py" in message
    assert "secret-" not in message  # the exception's message quotes the request: not logged


def test_the_wsgi_router_serves_stable() -> None:
    seen.clear()
    router = CanaryWSGI(stable_wsgi, canary_url="http://canary.invalid", default_rules=RULES)
    with httpx.Client(transport=httpx.WSGITransport(app=router), base_url="http://t") as client:
        for _ in range(3):
            response = client.get("/")
            assert (response.status_code, response.text) == (200, "stable")
    router.close()
    assert [(d.target, d.reason) for d in seen] == [("stable", "error")] * 3
