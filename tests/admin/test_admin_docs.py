"""docs/admin-api.md documents every request body the admin API takes, and each documented
example is accepted as written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from canary_mw.admin.api import admin_app
from canary_mw.admin.openapi import OPENAPI
from canary_mw.stores import Store, store_from_url
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"
TOKEN = "s3cret-token-for-tests"


def documented() -> list[tuple[str, str, dict[str, object], str]]:
    """(method, path, example body, fields text) for each row of the bodies table."""
    table = DOC.read_text().split("<!-- admin-bodies:begin -->")[1]
    table = table.split("<!-- admin-bodies:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        endpoint, example, fields = (cell.strip() for cell in line.strip().strip("|").split(" | "))
        method, path = endpoint.strip("`").split(" ")
        rows.append((method, path, json.loads(example.strip("`")), fields))
    return rows


def template_of(path: str) -> str:
    """The OpenAPI path a documented one (with placeholders such as {name}/add) falls under."""
    for template in OPENAPI["paths"]:
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not in the OpenAPI document")


def test_every_body_in_the_openapi_document_is_documented() -> None:
    rows = documented()
    covered = {(method.lower(), template_of(path)) for method, path, _, _ in rows}
    for template, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                assert (method, template) in covered, f"{method.upper()} {template} undocumented"
    for method, path, _, fields in rows:
        operation = OPENAPI["paths"][template_of(path)][method.lower()]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        for name in schema["properties"]:
            assert f"`{name}`" in fields, f"{method} {path}: field {name!r} undocumented"


@pytest.fixture
def store(redis_srv: RedisServer, prefix: str) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=prefix)
    yield handle
    handle.close()


async def test_every_documented_example_is_accepted(store: Store) -> None:
    app = admin_app(store, tokens={"docs": TOKEN})
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for method, documented_path, body, _ in documented():
            name = "canary" if "upstreams" in documented_path else "ips"
            path = documented_path.replace("{name}", name)
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 200, (method, path, response.text)
            if path == "/explain":  # the one body that writes nothing
                assert response.json()["rules"], response.text
                continue
            assert response.json()["changed"] is True, (method, path)
