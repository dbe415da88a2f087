"""The console's files: served from the package at the admin app's root (mounted or not),
with the strict policy, and naming nothing outside it (the browser tests are test_console.py)."""

from __future__ import annotations

import re
from importlib.resources import files

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from canary_mw import admin_app
from canary_mw.admin.console import CONTENT_SECURITY_POLICY
from canary_mw.stores import store_from_url

pytestmark = pytest.mark.anyio
TOKEN = "console-files-token-123"


@pytest.mark.parametrize("base", ["", "/canary-admin"])
async def test_served_with_the_policy_and_no_token(base: str) -> None:
    admin = admin_app(store_from_url("memory://console-files"), token=TOKEN)
    app = admin if not base else Starlette(routes=[Mount(base, app=admin)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
        for path, kind in (("/", "text/html"), ("/console.js", "text/javascript"),
                           ("/console.css", "text/css")):  # fmt: skip
            response = await client.get(base + path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind)
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
        # the API next to it still wants the token
        assert (await client.get(base + "/status")).status_code == 401


def test_the_page_loads_only_its_own_files_and_no_inline_code() -> None:
    static = files("canary_mw.admin") / "static"
    html = (static / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"#]+)"', html) == ["console.css", "console.js"]
    for inline in ("<script>", "style=", "onclick=", "onload="):
        assert inline not in html
    script = (static / "console.js").read_text()
    assert "http://" not in script.replace('"http://www.w3.org/2000/svg"', "")
    assert "https://" not in script
    assert "document.cookie" not in script  # the token lives in sessionStorage only
    assert "localStorage" not in script
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
