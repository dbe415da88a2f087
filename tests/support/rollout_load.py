"""Client load for the rollout tests: distinct users (cookie uid) spread over routers.

Unpaced: measured, pacing eight clients to 320 requests per second saved under a tenth of the
CPU of two rollout tests (the routers and the canary, not the clients, do most of the work)
and made the tests that wait for a number of users slower."""

from __future__ import annotations

import threading

import httpx

from tests.support.servers import AppServer

CLIENTS = 8


class Load:
    """Requests from distinct users (a new uid each time) against every live router, until
    stopped; ``served`` counts the answers by the version that served them."""

    def __init__(self, routers: list[AppServer]):
        self.routers = routers
        self.served: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(CLIENTS)]

    def _run(self, worker: int) -> None:
        user = worker
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                live = [router for router in self.routers if router.process is not None]
                router = live[user % len(live)]
                try:
                    response = client.get(router.url + "/", headers={"Cookie": f"uid={user}"})
                except httpx.HTTPError:
                    continue  # a router being killed
                name = response.headers.get("x-canary-version", "?")
                self.served[name] = self.served.get(name, 0) + 1
                user += CLIENTS

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
