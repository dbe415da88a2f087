"""Run layout commands against Redis from an event loop (ASGI)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster

from .._aio import run_within
from ..errors import StoreError
from .layout import CHANGE, CHANGE_SCRIPT, Command
from .memory import Notice
from .redis_clients import (
    ASYNC,
    WARM_ATTEMPTS,
    Client,
    change_call,
    client_options,
    group_by_db,
    make_client,
)
from .urls import RedisTarget

__all__ = ["AsyncRedisExecutor", "AsyncRedisSubscription"]


class AsyncRedisSubscription:
    def __init__(self, pubsub: Any):
        self._pubsub = pubsub

    @classmethod
    async def open(cls, client: Client, channel: str) -> AsyncRedisSubscription:
        if isinstance(client, RedisCluster):
            # Commands load the slot map lazily, pub/sub does not: it needs it to pick a node.
            try:
                await client.initialize()
            except (redis.RedisError, OSError) as exc:
                raise StoreError(f"cannot reach the cluster: {exc}") from exc
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
        except (redis.RedisError, OSError) as exc:
            await pubsub.aclose()
            raise StoreError(f"cannot subscribe to {channel}: {exc}") from exc
        return cls(pubsub)

    async def get(self, timeout: float) -> Notice | None:
        try:
            message = await self._pubsub.get_message(timeout=timeout)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"subscription lost: {exc}") from exc
        if message is None:
            return None
        data = message.get("data")
        return str(message["type"]), data if isinstance(data, bytes) else b""

    async def close(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()


class AsyncRedisExecutor:
    """Like RedisExecutor, for asyncio. Clients are created in the loop that first uses
    them and re-created if a different loop shows up (asyncio connections are loop-bound)."""

    def __init__(self, target: RedisTarget, *, lookup_timeout: float, timeout: float):
        self.target = target
        self.lookup_timeout = lookup_timeout
        self._fast_options = client_options(lookup_timeout)
        self._slow_options = client_options(timeout)
        self._clients: dict[tuple[int | None, bool], Client] = {}
        self._scripts: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self, db: int | None = None, *, fast: bool = False) -> Client:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._clients, self._scripts, self._loop = {}, {}, loop
        key = (db, fast)
        client = self._clients.get(key)
        if client is None:
            options = self._fast_options if fast else self._slow_options
            client = self._clients[key] = make_client(ASYNC, self.target, db, options)
        return client

    async def _change(self, args: Sequence[object]) -> object:
        client = self.client()
        script = self._scripts.get(id(client))
        if script is None:
            script = self._scripts[id(client)] = client.register_script(CHANGE_SCRIPT)
        keys, values = change_call(args)
        try:
            return await script(keys=keys, args=values)
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: reported like any command error
            return exc

    async def _run(self, commands: Sequence[Command], fast: bool) -> list[object]:
        if len(commands) == 1 and commands[0][1][0] == CHANGE:
            return [await self._change(commands[0][1][1:])]
        by_db = group_by_db(commands)
        results: list[object] = [None] * len(commands)
        for db, indexes in by_db.items():
            pipe = self.client(db, fast=fast).pipeline(transaction=False)
            for index in indexes:
                pipe.execute_command(*commands[index][1])
            for index, result in zip(
                indexes, await pipe.execute(raise_on_error=False), strict=False
            ):
                results[index] = result
        return results

    async def run(self, commands: Sequence[Command], *, fast: bool = False) -> list[object]:
        try:
            if fast:
                # One budget for connect + round trip, whatever the socket timeouts say.
                return await run_within(self._run(commands, fast), self.lookup_timeout)
            return await self._run(commands, fast)
        except TimeoutError as exc:
            raise StoreError(f"Redis lookup exceeded {self.lookup_timeout * 1000:.0f} ms") from exc
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"Redis failed: {exc.__class__.__name__}: {exc}") from exc

    async def warm(self, dbs: Iterable[int | None] = (None,)) -> None:
        """Connect the request-time clients now (see RedisExecutor.warm)."""
        for db in dbs:
            for attempt in range(WARM_ATTEMPTS):
                try:
                    await self.client(db, fast=True).ping()
                    break
                except (redis.RedisError, OSError) as exc:
                    if attempt == WARM_ATTEMPTS - 1:
                        raise StoreError(f"Redis failed: {exc}") from exc

    async def subscribe(self, channel: str) -> AsyncRedisSubscription:
        try:
            return await AsyncRedisSubscription.open(self.client(), channel)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"cannot subscribe: {exc}") from exc

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(redis.RedisError, OSError, RuntimeError):
                await client.aclose()
