"""One interface over the blocking and asyncio stores, so one suite checks both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from canary_mw.stores import AsyncStore, Store, async_store_from_url, store_from_url


class Flavoured:
    """Wraps a Store or an AsyncStore; every method becomes awaitable."""

    def __init__(self, store: Store | AsyncStore):
        self.store = store

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            if name == "subscribe":
                return Flavoured(result)  # type: ignore[arg-type]
            return result

        return call

    async def close(self) -> None:
        if isinstance(self.store, AsyncStore):
            await self.store.aclose()
        elif isinstance(self.store, Store):
            self.store.close()
        else:
            result = self.store.close()
            if asyncio.iscoroutine(result):
                await result


#: The contract is about what the stores do, not how fast: production's 1 s Redis timeout and
#: 50 ms lookup budget failed a contract test once on a loaded CI run (a cluster read timed
#: out). The timeouts themselves are tested in tests/faults.
PATIENT = {"timeout": 10.0, "lookup_timeout": 5.0}


def open_store(flavour: str, url: str, prefix: str) -> Flavoured:
    if flavour == "sync":
        return Flavoured(store_from_url(url, prefix=prefix, **PATIENT))
    return Flavoured(async_store_from_url(url, prefix=prefix, **PATIENT))


def raw(url: str, *args: Any, db: int | None = None) -> object:
    """Run one Redis command as an operator's redis-cli would (through the store's executor,
    so it also works for the memory backend and the cluster)."""
    store = store_from_url(url)
    try:
        return store._executor.run([(db, args)])[0]
    finally:
        store.close()
