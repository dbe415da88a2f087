"""Run layout commands against Redis from threads (WSGI workers, the CLI)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from ..errors import StoreError
from .layout import CHANGE, CHANGE_SCRIPT, Command
from .memory import Notice
from .redis_clients import (
    SYNC,
    WARM_ATTEMPTS,
    Client,
    change_call,
    client_options,
    group_by_db,
    make_client,
)
from .urls import RedisTarget

__all__ = ["RedisExecutor", "RedisSubscription"]


class RedisSubscription:
    def __init__(self, client: Client, channel: str):
        self._pubsub = client.pubsub()
        try:
            self._pubsub.subscribe(channel)
        except (redis.RedisError, OSError) as exc:
            self._pubsub.close()
            raise StoreError(f"cannot subscribe to {channel}: {exc}") from exc

    def get(self, timeout: float) -> Notice | None:
        try:
            message = self._pubsub.get_message(timeout=timeout)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"subscription lost: {exc}") from exc
        if message is None:
            return None
        data = message.get("data")
        return str(message["type"]), data if isinstance(data, bytes) else b""

    def close(self) -> None:
        self._pubsub.close()


class RedisExecutor:
    """Lazily created clients: a *fast* one for request-time lookups (the time budget, split
    between connect and read), a *slow* one for snapshot reads, writes and pub/sub."""

    def __init__(self, target: RedisTarget, *, lookup_timeout: float, timeout: float):
        self.target = target
        self._fast_options = client_options(lookup_timeout / 2)
        self._slow_options = client_options(timeout)
        self._clients: dict[tuple[int | None, bool], Client] = {}
        self._scripts: dict[int, Any] = {}
        self._lock = threading.Lock()

    def client(self, db: int | None = None, *, fast: bool = False) -> Client:
        key = (db, fast)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    options = self._fast_options if fast else self._slow_options
                    client = self._clients[key] = make_client(SYNC, self.target, db, options)
        return client

    def _change(self, args: Sequence[object]) -> object:
        client = self.client()
        script = self._scripts.get(id(client))
        if script is None:
            script = self._scripts[id(client)] = client.register_script(CHANGE_SCRIPT)
        keys, values = change_call(args)
        try:
            return script(keys=keys, args=values)
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: reported like any command error
            return exc

    def run(self, commands: Sequence[Command], *, fast: bool = False) -> list[object]:
        if len(commands) == 1 and commands[0][1][0] == CHANGE:
            try:
                return [self._change(commands[0][1][1:])]
            except (redis.RedisError, OSError) as exc:
                raise StoreError(f"Redis failed: {exc.__class__.__name__}: {exc}") from exc
        by_db = group_by_db(commands)
        results: list[object] = [None] * len(commands)
        try:
            for db, indexes in by_db.items():
                pipe = self.client(db, fast=fast).pipeline(transaction=False)
                for index in indexes:
                    pipe.execute_command(*commands[index][1])
                for index, result in zip(indexes, pipe.execute(raise_on_error=False), strict=False):
                    results[index] = result
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"Redis failed: {exc.__class__.__name__}: {exc}") from exc
        return results

    def warm(self, dbs: Iterable[int | None] = (None,)) -> None:
        """Connect the request-time clients now, so no request pays for connection setup
        (a cluster client's first use also discovers the slot map: ~40 ms on loopback).
        Runs in the background, so it tries again where a request would not: the fast
        clients' connect budget is tight, and a busy machine can miss it once."""
        for db in dbs:
            for attempt in range(WARM_ATTEMPTS):
                try:
                    self.client(db, fast=True).ping()
                    break
                except (redis.RedisError, OSError) as exc:
                    if attempt == WARM_ATTEMPTS - 1:
                        raise StoreError(f"Redis failed: {exc}") from exc

    def subscribe(self, channel: str) -> RedisSubscription:
        try:
            return RedisSubscription(self.client(), channel)
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"cannot subscribe: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()
