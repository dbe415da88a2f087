"""Store URLs (stores/urls.py and store_from_url): what each URL means, and the refusals that
say how to write it. Nothing here connects."""

from __future__ import annotations

import pytest
from redis.connection import parse_url

from canary_mw import ConfigurationError, async_store_from_url, store_from_url
from canary_mw.stores import check_store_url
from canary_mw.stores.urls import RedisTarget, parse_store_url


@pytest.mark.parametrize(
    ("url", "kind", "prefix", "target"),
    [
        ("memory://", "memory", "canary:", RedisTarget("memory")),
        ("memory://shared?prefix=app:", "memory", "app:", RedisTarget("memory")),
        ("redis://localhost:6379/2", "redis", "canary:",
         RedisTarget("redis", url="redis://localhost:6379/2")),
        ("redis://h/0?prefix=x:&socket_keepalive=1", "redis", "x:",
         RedisTarget("redis", url="redis://h/0?socket_keepalive=1")),
        ("rediss://:pw@h:6380/0", "redis", "canary:", RedisTarget("redis", url="rediss://:pw@h:6380/0")),
        ("redis+unix:///run/redis.sock?db=3", "redis", "canary:",
         RedisTarget("redis", url="unix:///run/redis.sock?db=3")),
        ("redis+sentinel://:s%40cret@a:26379,b/mymaster/4?sentinel_password=sp", "sentinel",
         "canary:", RedisTarget("sentinel", nodes=(("a", 26379), ("b", 26379)),
                                service="mymaster", db=4, password="s@cret",
                                sentinel_password="sp")),
        ("redis+cluster://n1:7000,[::1]:7001", "cluster", "{canary}:",
         RedisTarget("cluster", nodes=(("n1", 7000), ("::1", 7001)))),
    ],
    ids=["memory", "memory-named", "redis", "redis-options", "rediss", "unix", "sentinel",
         "cluster"],
)  # fmt: skip
def test_what_a_url_means(url: str, kind: str, prefix: str, target: RedisTarget) -> None:
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.prefix, parsed.target) == (kind, prefix, target)


@pytest.mark.parametrize(
    "url", ["redis+unix:///run/redis.sock?db=3&prefix=x:", "redis://:pw@h:6380/1?prefix=x:"]
)
def test_redis_py_reads_the_url_we_give_it(url: str) -> None:
    # The URL redis-py gets is its own kind (unix://, redis://) without our options.
    kwargs = parse_url(parse_store_url(url).target.url)
    assert "prefix" not in kwargs
    assert kwargs.get("path") == "/run/redis.sock" or kwargs.get("host") == "h"
    assert kwargs["db"] in (1, 3)


def test_memory_stores_with_the_same_name_share_data() -> None:
    one, two = store_from_url("memory://urls-shared"), store_from_url("memory://urls-shared")
    other = store_from_url("memory://urls-other")
    one.add_members("vip", ["u1"])
    assert two.members("vip") == {"u1"}
    assert other.members("vip") == set()


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("localhost:6379", {}, "must be a URL such as 'memory://'"),
        ("mysql://x", {}, r"unsupported store URL scheme 'mysql'; use one of \["),
        ("redis+cluster://n1:7000/1", {}, "only database 0"),
        ("redis+cluster://n1:7000?db=1", {}, r"unknown option\(s\) \['db'\]"),
        ("redis+cluster://n1:7000", {"prefix": "app:"}, r"hash tag.*use '\{app\}:'"),
        ("redis+sentinel://h:26379", {}, "names the service"),
        ("redis+sentinel://h:26379/m/x", {}, "bad database number"),
        ("redis+cluster://n1:port", {}, "bad port"),
        ("memory://", {"lookup_timeout": 0}, "0 < lookup_timeout <= 60"),
        ("memory://", {"timeout": 61}, "0 < timeout <= 60"),
    ],
)
def test_a_bad_url_is_refused_with_how_to_write_it(
    url: str, options: dict[str, float | str], message: str
) -> None:
    for make in (store_from_url, async_store_from_url, check_store_url):
        with pytest.raises(ConfigurationError, match=message):
            make(url, **options)  # type: ignore[operator]


def test_the_prefix_argument_wins_over_the_url() -> None:
    store = store_from_url("memory://?prefix=from-url:", prefix="given:")
    assert store.prefix == "given:"
    assert check_store_url("redis+cluster://n:7000", prefix="{app}:")[1] == "{app}:"


def test_the_lookup_budget_is_the_stores() -> None:
    assert store_from_url("redis://127.0.0.1:9/0", lookup_timeout=0.2).lookup_timeout == 0.2
    assert async_store_from_url("memory://", lookup_timeout=0.3).lookup_timeout == 0.3
