"""The admin API over a real Redis: a write that changes nothing bumps nothing and records
nothing (the same rule as the library and the CLI, from the store's one change mechanism)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from canary_mw.admin.api import admin_app
from canary_mw.stores import Store, store_from_url
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def store(redis_srv: RedisServer, prefix: str) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=prefix)
    yield handle
    handle.close()


async def test_adding_an_address_already_there_changes_nothing(store: Store) -> None:
    app = admin_app(store, tokens={"deploy": TOKEN})
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        body = {"members": ["203.0.113.7"], "ip": True}
        first = (await client.post("/sets/ips/add", json=body, headers=headers)).json()
        again = (await client.post("/sets/ips/add", json=body, headers=headers)).json()
        history = (await client.get("/history", headers=headers)).json()
    assert (first["changed"], first["version"]) == (True, 1)
    assert (again["changed"], again["version"]) == (False, 1)
    assert len(history) == 1
    assert store.get_config().version == 1
