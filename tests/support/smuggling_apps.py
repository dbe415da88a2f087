"""A plain Starlette canary for the request-smuggling regression test (finding 1 of issue
11): its 404 never reads the request body, as most apps' 404s do; it remembers every request
it saw (``GET /seen``, JSON), so a test can tell whether a smuggled one reached it."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SEEN: list[list[str]] = []


async def page(request: Request) -> Response:
    path = request.url.path
    if path == "/seen":
        return JSONResponse(SEEN)
    SEEN.append([request.method, path])
    if path == "/me":
        user = request.headers.get("x-user", "nobody")
        response = PlainTextResponse(f"hello {user}")
        response.set_cookie("session", user)
        return response
    return PlainTextResponse("not found", status_code=404)  # the body is never read


app = Starlette(
    routes=[Route("/{path:path}", page, methods=["GET", "POST", "PUT", "DELETE", "HEAD"])]
)
