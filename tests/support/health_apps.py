"""A canary backend that says which one it is (``X-Backend: $BACKEND_NAME``) on every path,
for the health tests that give each host its own backend."""

from __future__ import annotations

import os
from typing import Any


async def backend_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    name = os.environ["BACKEND_NAME"].encode()
    body = b"backend " + name + b"\n"
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)),
        (b"x-backend", name),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
