"""The sticky assignment cookie through a rollout, with real processes: two uvicorn routers
sharing a private Redis and a signing secret, a canary, and users keeping their cookies."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from canary_mw import RolloutPlan, Store, store_from_url
from canary_mw.rollout.plan import RULE_ID
from canary_mw.sticky import bucket
from tests.support.servers import AppServer, RedisServer, uvicorn_command, wait_until

pytestmark = pytest.mark.slow

USERS = [f"u{n}" for n in range(200)]


@pytest.fixture
def routers(fresh_redis: RedisServer) -> Iterator[tuple[Store, list[AppServer]]]:
    canary = AppServer(uvicorn_command("tests.support.rollout_apps:canary_app")).start()
    env = {"STORE_URL": fresh_redis.url, "CANARY_URL": canary.url,
           "STICKY_SECRET": "a-secret-the-routers-share"}  # fmt: skip
    command = uvicorn_command("tests.support.rollout_apps:sticky_router_app", factory=True)
    servers = [AppServer(command, env=env).start() for _ in range(2)]
    store = store_from_url(fresh_redis.url)
    try:
        yield store, servers
    finally:
        store.close()
        for server in [*servers, canary]:
            server.cleanup()


def visit(client: httpx.Client, router: AppServer, uid: str, sticky: str | None = None) -> str:
    cookies = f"uid={uid}" + (f"; canary_mw_version={sticky}" if sticky else "")
    response = client.get(router.url + "/", headers={"Cookie": cookies})
    response.raise_for_status()
    assert response.headers["x-canary-version"] == response.text.strip()
    return response.text.strip()


def test_placed_users_keep_their_version_when_the_step_is_lowered_and_lose_it_on_rollback(
    routers: tuple[Store, list[AppServer]],
) -> None:
    store, (a, b) = routers
    store.start_rollout(RolloutPlan(by="cookie:uid", steps=(25, 50), hold=600), actor="alice")
    store.rollout_command("pause")  # stay at 25 % while the test looks
    salt = f"rollout-{store.rollout_status()['rollout'].id}"
    inside = [u for u in USERS if bucket(salt, u) < 2500]
    probe = next(u for u in inside if bucket(salt, u) >= 500)  # in at 25 %, out at 5 %
    with httpx.Client(timeout=5) as client:
        for router in (a, b):
            wait_until(lambda r=router: visit(client, r, probe) == "canary", timeout=10,
                       what="the 25 % step on every router")  # fmt: skip
        # Every user's first answer, half through each router: each names its version.
        placed: dict[str, tuple[str, str]] = {}
        for n, uid in enumerate(USERS):
            response = client.get((a, b)[n % 2].url + "/", headers={"Cookie": f"uid={uid}"})
            version = response.text.strip()
            cookie = response.cookies["canary_mw_version"]
            assert cookie.split(".")[:2] == [version, "2500"]
            placed[uid] = (version, cookie)
        on_canary = [uid for uid, (version, _) in placed.items() if version == "canary"]
        assert sorted(on_canary) == sorted(inside)  # the bucket decided, nothing else

        # The operator lowers the rollout's rule to 5 % (the salt kept).
        store.set_percent(5, rule_id=RULE_ID, actor="alice")
        for router in (a, b):
            wait_until(lambda r=router: visit(client, r, probe) == "stable", timeout=10,
                       what="the 5 % step on every router")  # fmt: skip
        for n, (uid, (version, cookie)) in enumerate(placed.items()):
            # Back with the cookie, through the other router: the same version...
            assert visit(client, (b, a)[n % 2], uid, cookie) == version, uid
            # ... and after logging in as someone else (a new key), still the same.
            assert visit(client, (a, b)[n % 2], f"account-{uid}", cookie) == version, uid
        # Without the cookie, the 5 % step is what decides.
        assert visit(client, a, probe) == "stable"

        # Rolled back: the rollout's rule is gone, and so is every canary placement.
        store.rollout_command("abort")
        for router in (a, b):
            wait_until(lambda r=router: visit(client, r, on_canary[0], placed[on_canary[0]][1])
                       == "stable", timeout=10, what="the rollback on every router")  # fmt: skip
        for n, uid in enumerate(on_canary):
            assert visit(client, (a, b)[n % 2], uid, placed[uid][1]) == "stable", uid
