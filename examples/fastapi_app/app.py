"""The classic two-version demo, with FastAPI: one app, run twice.

Canary:  MESSAGE="This is version 2" \\
         uvicorn --factory app:create_app --port 8001 --lifespan on --no-proxy-headers
Stable:  CANARY_URL=http://127.0.0.1:8001 CANARY_MW_STORE=redis://127.0.0.1:6379/0 \\
         uvicorn --factory app:create_app --port 8000 --workers 2 --lifespan on --no-proxy-headers

--lifespan on: a configuration error stops uvicorn at startup (under the default "auto" it is
reported as "ASGI 'lifespan' protocol appears unsupported" and every request gets a 500).
--no-proxy-headers: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 and rewrite
the client address before CanaryRouter sees it; CanaryRouter's trusted_proxies decides that.

The stable run adds CanaryRouter, so the clients, cookies and users you put into Redis get
the canary's answer instead of its own.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from canary_mw import DECISION_KEY, CanaryRouter


def create_app() -> FastAPI:
    message = os.environ.get("MESSAGE", "This is version 1")
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"], response_class=PlainTextResponse)
    async def get_message(path: str, request: Request) -> str:
        # On stable, request.scope[DECISION_KEY] says why this request stayed here.
        assert DECISION_KEY in request.scope or not canary_url
        return message + "\n"

    canary_url = os.environ.get("CANARY_URL")
    if canary_url:  # this is the stable deployment: route some traffic to the canary
        app.add_middleware(
            CanaryRouter,  # type: ignore[arg-type]
            store=os.environ.get("CANARY_MW_STORE", "redis://127.0.0.1:6379/0"),
            canary_url=canary_url,
            trusted_proxies=json.loads(os.environ.get("TRUSTED_PROXIES", "[]")),
        )
    return app
