"""Build redis-py clients for a store URL, blocking or asyncio, with one piece of code.

redis-py mirrors its blocking classes in ``redis.asyncio``; a ``Flavour`` names one family.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import StoreError
from .layout import Command
from .urls import RedisTarget

__all__ = [
    "ASYNC",
    "SYNC",
    "WARM_ATTEMPTS",
    "Client",
    "Flavour",
    "change_call",
    "client_options",
    "group_by_db",
    "make_client",
]

#: Tries at connecting the fast (request-time) clients in the background before giving up.
WARM_ATTEMPTS = 3

Client = Any  # redis.Redis / RedisCluster and their asyncio twins

# redis-py's defaults are tuned for batch jobs: 5 s socket timeouts and 10 retries with
# backoff, which stall a request for ~5 s when Redis refuses connections and ~58 s when it
# hangs. canary_mw never retries inside a request (the circuit breaker and the background
# refresher handle recovery) and bounds every socket operation.
# redis-py >= 8 sends CLIENT SETINFO (two extra round trips per new connection) unless
# driver_info is None; older versions take lib_name/lib_version=None instead.
_HAS_DRIVER_INFO = "driver_info" in inspect.signature(redis.Redis.__init__).parameters


def client_options(timeout: float, connect_timeout: float | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout if connect_timeout is not None else timeout,
        "retry": Retry(NoBackoff(), 0),
        # RESP2: no HELLO round trip on connect, and replies in the shapes the layout parses.
        "protocol": 2,
    }
    if _HAS_DRIVER_INFO:
        options["driver_info"] = None
    else:  # pragma: no cover - exercised only with redis-py < 8
        options["lib_name"] = None
        options["lib_version"] = None
    return options


@dataclass(frozen=True, slots=True)
class Flavour:
    redis: Any
    pool: Any
    parse_url: Any
    sentinel: Any
    cluster: Any
    cluster_node: Any


SYNC = Flavour(
    redis.Redis,
    redis.connection.ConnectionPool,
    redis.connection.parse_url,
    redis.sentinel.Sentinel,
    redis.cluster.RedisCluster,
    redis.cluster.ClusterNode,
)
ASYNC = Flavour(
    redis.asyncio.Redis,
    redis.asyncio.connection.ConnectionPool,
    redis.asyncio.connection.parse_url,
    redis.asyncio.sentinel.Sentinel,
    redis.asyncio.cluster.RedisCluster,
    redis.asyncio.cluster.ClusterNode,
)


def make_client(
    flavour: Flavour, target: RedisTarget, db: int | None, options: dict[str, Any]
) -> Client:
    """A client for ``db`` (None: the URL's own database) with ``options`` applied."""
    if target.kind == "cluster":
        if db:
            raise StoreError(f"Redis Cluster has only database 0; a rule asks for database {db}")
        return flavour.cluster(
            startup_nodes=[flavour.cluster_node(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            **options,
        )
    if target.kind == "sentinel":
        sentinel = flavour.sentinel(
            list(target.nodes),
            sentinel_kwargs={**options, "password": target.sentinel_password},
            **options,
        )
        return sentinel.master_for(
            target.service,
            db=target.db if db is None else db,
            username=target.username,
            password=target.password,
        )
    kwargs = flavour.parse_url(target.url)
    if db is not None:
        kwargs["db"] = db
    return flavour.redis(connection_pool=flavour.pool(**{**kwargs, **options}))


def change_call(args: Sequence[object]) -> tuple[list[object], list[object]]:
    """Script keys and args for a Layout.change command (see CHANGE_SCRIPT)."""
    config, audit, expected, commands, fields, maxlen, channel, message, keys, counted = args
    return [config, audit, *json.loads(str(keys))], [
        expected,
        commands,
        fields,
        maxlen,
        channel,
        message,
        counted,
    ]


def group_by_db(commands: Sequence[Command]) -> dict[int | None, list[int]]:
    """Command positions per database: one pipeline per database, results put back in order."""
    by_db: dict[int | None, list[int]] = {}
    for index, (db, _) in enumerate(commands):
        by_db.setdefault(db, []).append(index)
    return by_db
