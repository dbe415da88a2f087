"""Operating the mirror: the store (memory and Redis), history and rollback, what the routers'
snapshot does with garbage, the command line and the admin API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from click.testing import CliRunner, Result

from canary_mw import ConfigurationError, Store, admin_app, store_from_url
from canary_mw.admin.cli import main
from canary_mw.engine.builder import SnapshotBuilder
from canary_mw.rules import DEFAULT_RULES
from tests.support.servers import RedisServer

DOC = {"upstream": "http://canary:8000", "compare": {"body": "json", "ignore": ["/time"]}}
TOKEN = "a-token-for-the-shadow-tests"


@pytest.fixture(params=["memory", "redis"])
def url(request: pytest.FixtureRequest, prefix: str) -> str:
    if request.param == "memory":
        return f"memory://shadow-{prefix.strip('{}:')}"
    server: RedisServer = request.getfixturevalue("redis_srv")
    return f"{server.url}?prefix={prefix}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    handle = store_from_url(url)
    yield handle
    handle.close()


def test_set_audit_and_rollback(store: Store) -> None:
    store.set_mode("rules")  # a config change from before the mirror existed
    change = store.set_mirror(DOC, actor="alice")
    assert change.changed
    assert change.after["mirror"] == {"compare": {"body": "json", "ignore": ["/time"]},
                                      "upstream": "http://canary:8000"}  # fmt: skip
    assert "mirror" not in change.before  # entries without a mirror look as they did
    assert not store.set_mirror(dict(DOC)).changed  # the same document again: no change
    entry = store.history(1)[0]
    assert (entry.action, entry.actor, entry.is_config) == ("mirror set", "alice", True)
    assert store.rollback().changed  # back to no mirror
    assert store.get_config().mirror is None
    store.rollback()  # and forward again: the rollback is itself a change
    assert json.loads(store.get_config().mirror or "null")["upstream"] == "http://canary:8000"
    assert store.clear_mirror().changed
    assert not store.clear_mirror().changed


def test_an_invalid_document_writes_nothing(store: Store) -> None:
    version = store.get_config().version
    with pytest.raises(ConfigurationError, match="percent"):
        store.set_mirror({**DOC, "percent": -1})
    assert store.get_config().version == version


def test_report_counts_add_up_and_samples_are_bounded(store: Store) -> None:
    store.add_shadow({"GET /a/* sent": 2, "GET /a/* matches": 1}, [f"s{i}" for i in range(40)])
    store.add_shadow({"GET /a/* sent": 3}, [f"t{i}" for i in range(40)])
    counts, samples = store.shadow_report()
    assert counts == {"GET /a/* sent": 5, "GET /a/* matches": 1}
    assert len(samples) == 50
    assert samples[0] == "t39"
    store.clear_shadow_report()
    assert store.shadow_report() == ({}, [])


def test_garbage_in_the_store_keeps_the_last_good_mirror(store: Store) -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    seen = []
    builder.mirror_watchers.append(seen.append)
    store.set_mirror(DOC)
    good = builder.update(store.read_state([], [])).mirror
    assert good is not None
    assert seen == [good]
    config = dict(store.read_state([], []).config)  # type: ignore[call-overload]
    config[b"mirror"] = b'{"upstream": 42}'
    from canary_mw.stores.layout import StoreState

    assert builder.update(StoreState(config)).mirror is good  # last good kept, no new call
    assert seen == [good]
    del config[b"mirror"]
    assert builder.update(StoreState(config)).mirror is None
    assert seen == [good, None]


def cli(url: str, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--store", url, "--actor", "tester", *args], input=stdin)


def test_command_line(url: str, store: Store) -> None:
    result = cli(url, "mirror", "status")
    assert result.output.splitlines()[-1] == "mirror: off"
    result = cli(url, "mirror", "set", "http://canary:8000", "--method", "GET", "--method",
                 "POST", "--body", "json", "--ignore", "/time", "--percent", "10", "--by",
                 "random", "--when", '{"path_prefix": "/api"}', "--compare-header",
                 "content-type", "--learn", "3", "--queue", "5", "--concurrency", "2", "--max-body", "10")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mirror set: mirror on -> http://canary:8000 (version" in result.output
    stored = json.loads(store.get_config().mirror or "null")
    assert stored == {
        "upstream": "http://canary:8000", "methods": ["GET", "POST"], "percent": 10.0,
        "by": "random", "when": {"path_prefix": "/api"}, "max_body": 10, "queue": 5,
        "concurrency": 2,
        "compare": {"body": "json", "ignore": ["/time"], "headers": ["content-type"],
                    "learn": 3},
    }  # fmt: skip
    status = json.loads(cli(url, "mirror", "status", "--json").output.split("\n", 1)[-1]
                        if url.startswith("memory") else cli(url, "mirror", "status", "--json").output)  # fmt: skip
    assert status["mirror"]["upstream"] == "http://canary:8000"
    bad = cli(url, "mirror", "set", "http://canary:8000", "--percent", "200")
    assert bad.exit_code == 1
    assert "error: mirror: percent" in bad.output
    assert cli(url, "mirror", "set").exit_code == 2  # no URL, no document
    document = json.dumps({"upstream": "http://other:8000"})
    assert cli(url, "mirror", "set", "--document", "-", stdin=document).exit_code == 0
    assert json.loads(store.get_config().mirror or "null") == {"upstream": "http://other:8000"}

    store.add_shadow({"GET /api/* sent": 3, "GET /api/* matches": 2,
                      "GET /api/* mismatch:body": 1},
                     [json.dumps({"request": "GET /api/x", "stable": 200, "shadow": 200,
                                  "differences": [{"kind": "body", "field": "/price",
                                                   "stable": "10", "shadow": "12"}]})])  # fmt: skip
    lines = cli(url, "mirror", "report").output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("route"))
    assert lines[header].split() == ["route", "sent", "dropped", "skipped", "errors", "matches",
                                     "diff:status", "diff:header", "diff:body"]  # fmt: skip
    assert lines[header + 1].split() == ["GET", "/api/*", "3", "0", "0", "0", "2", "0", "0", "1"]
    assert lines[-1].split() == ["GET", "/api/x", "200", "vs", "200", "body", "/price:", "10",
                                 "!=", "12"]  # fmt: skip
    reset = cli(url, "mirror", "report", "--json", "--reset")
    assert '"route": "GET /api/*"' in reset.output
    assert cli(url, "mirror", "report").output.splitlines()[-1] == "no shadow traffic counted yet"
    assert "mirror off: mirror off" in cli(url, "mirror", "off").output


def test_status_shows_the_mirror_and_an_invalid_one(url: str, store: Store) -> None:
    assert "mirror " not in cli(url, "status").output  # off: no line at all
    store.set_mirror({"upstream": "http://canary:8000", "percent": 10})
    assert "mirror   on -> http://canary:8000 (GET, HEAD; 10%;" in cli(url, "status").output
    assert json.loads(cli(url, "status", "--json").stdout)["mirror"]["percent"] == 10
    store._run(store._plain([(None, ("HSET", store.layout.config, "mirror", '{"upstream": 1}'))]))
    output = cli(url, "status").output
    assert "mirror   INVALID (see problems)" in output
    assert "config mirror: mirror: upstream" in output


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = admin_app(store, tokens={"deploy": TOKEN})
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://admin",
                                 headers=headers) as client:  # fmt: skip
        yield client


@pytest.mark.anyio
async def test_admin_api(api: httpx.AsyncClient, store: Store) -> None:
    assert (await api.get("/mirror")).json() == {"mirror": None}
    bad = await api.put("/mirror", json={"upstream": "http://c:1", "queue": 0})
    assert bad.status_code == 422
    assert "queue" in bad.json()["detail"][0]["msg"]
    done = await api.put("/mirror", json=DOC)
    assert done.status_code == 200
    assert done.json()["changed"] is True
    assert (await api.get("/mirror")).json()["mirror"]["upstream"] == "http://canary:8000"
    assert store.history(1)[0].actor == "api:deploy@10.1.2.3"
    store.add_shadow({"GET /a/* sent": 1, "GET /a/* errors": 1}, ["not json", '{"request": "x"}'])
    report = (await api.get("/mirror/report")).json()
    assert report["routes"][0]["route"] == "GET /a/*"
    assert (report["routes"][0]["sent"], report["routes"][0]["errors"]) == (1, 1)
    assert report["samples"] == [{"request": "x"}]  # garbage left out
    assert (await api.delete("/mirror")).json()["changed"] is True
    assert (await api.get("/mirror")).json() == {"mirror": None}
