"""The console: the page an operator opens at the admin app's root.

Three static files shipped inside the package (``static/``: HTML, one JavaScript module, CSS)
and nothing else: every view reads and every action writes through the admin API with the
bearer token the operator types, which the page keeps in the tab's session storage and sends
as a header, never as a cookie (so a cross-site page cannot ride on it: no CSRF). The files
hold no data, so they are served without a token; the strict Content-Security-Policy allows
only this origin's own script, style and API (no inline script, no CDN, no framing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["CONTENT_SECURITY_POLICY", "console_routes"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load, so a page upgraded with the package is never half old.
    "Cache-Control": "no-cache",
}

_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}


def _asset(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    body = (files("canary_mw.admin") / "static" / name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return serve


def console_routes() -> list[Route]:
    """The page and its two assets, read from the package once."""
    return [
        Route(path, _asset(name, media_type), methods=["GET", "HEAD"])
        for path, (name, media_type) in _ASSETS.items()
    ]
