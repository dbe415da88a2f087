"""Parse store URLs in the style of the ``limits`` package, without connecting to anything.

``memory://[NAME]``, ``redis://``, ``rediss://``, ``redis+unix:///path.sock?db=N``,
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` and
``redis+cluster://[:password@]host:port[,host:port...]``. Query options common to all:
``prefix`` (key prefix, default ``canary:``). Sentinel also takes ``sentinel_password``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import ConfigurationError

__all__ = ["RedisTarget", "StoreURL", "parse_store_url"]

Kind = Literal["memory", "redis", "sentinel", "cluster"]
_SCHEMES: dict[str, Kind] = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "redis+unix": "redis",
    "unix": "redis",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where and how to connect; ``url`` is a plain redis-py URL for the single-server kind."""

    kind: Kind
    url: str = ""
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


@dataclass(frozen=True, slots=True)
class StoreURL:
    kind: Kind
    prefix: str
    target: RedisTarget
    memory_name: str = ""
    options: dict[str, str] = field(default_factory=dict)


def _nodes(netloc: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]") or "localhost"
        try:
            nodes.append((host, int(port) if port else default_port))
        except ValueError:
            raise ConfigurationError(f"bad port in store URL {url!r}: {item!r}") from None
    return tuple(nodes)


def parse_store_url(url: str) -> StoreURL:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"store must be a URL such as 'memory://' or 'redis://localhost:6379/0', got {url!r}"
        )
    scheme = url.partition("://")[0].lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise ConfigurationError(
            f"unsupported store URL scheme {scheme!r}; use one of {sorted(_SCHEMES)}"
        )
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    # Redis Cluster: a hash tag puts every key in one slot, so changes can stay atomic.
    prefix = query.pop("prefix", "{canary}:" if kind == "cluster" else "canary:")
    if kind == "memory":
        return StoreURL(kind, prefix, RedisTarget(kind), memory_name=parts.netloc + parts.path)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if kind == "redis":
        plain = url.replace("redis+unix://", "unix://", 1) if scheme == "redis+unix" else url
        # Only our option leaves the query. Not through urlsplit/geturl: that writes
        # "unix:///run/redis.sock" (no host) back as "unix:/run/redis.sock", which redis-py
        # refuses.
        rest = urlencode(query)
        plain = plain.partition("?")[0] + (f"?{rest}" if rest else "")
        return StoreURL(kind, prefix, RedisTarget(kind, url=plain), options=query)
    sentinel_password = query.pop("sentinel_password", None)
    if query:
        raise ConfigurationError(
            f"unknown option(s) {sorted(query)} in {scheme} URL; supported: prefix"
            + (", sentinel_password" if kind == "sentinel" else "")
        )
    segments = [segment for segment in parts.path.split("/") if segment]
    if kind == "sentinel":
        if not segments:
            raise ConfigurationError(
                "a sentinel URL names the service: redis+sentinel://host:26379/mymaster[/db]"
            )
        try:
            db = int(segments[1]) if len(segments) > 1 else 0
        except ValueError:
            raise ConfigurationError(f"bad database number in {url!r}") from None
        target = RedisTarget(
            kind,
            nodes=_nodes(parts.netloc, 26379, url),
            service=segments[0],
            db=db,
            username=username,
            password=password,
            sentinel_password=sentinel_password,
        )
        return StoreURL(kind, prefix, target)
    if segments and segments != ["0"]:
        raise ConfigurationError("Redis Cluster has only database 0; remove the path from the URL")
    target = RedisTarget(
        kind, nodes=_nodes(parts.netloc, 6379, url), username=username, password=password
    )
    return StoreURL(kind, prefix, target)
