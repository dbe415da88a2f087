"""A router whose stable app reads the request body as a stream (it never holds it whole), so
the router process's memory shows what the router itself keeps of an upload."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from canary_mw import CanaryRouter
from canary_mw.asgi import DECISION_KEY


async def streaming_stable(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    decision = scope.get(DECISION_KEY)
    body = json.dumps({
        "served_by": "stable",
        "reason": decision.reason if decision else None,
        "body_size": size,
        "body_sha256": digest.hexdigest(),
    }).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def make_app() -> Any:
    return CanaryRouter(streaming_stable, **json.loads(os.environ["CANARY_TEST_OPTIONS"]))
