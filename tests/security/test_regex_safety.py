"""Rule regexes run in linear time (RE2): a catastrophic-backtracking pattern is harmless, and
patterns RE2 cannot run are refused on every write path (Python API, CLI, admin API) naming the
rule and field; such a pattern written straight into Redis keeps the last good rules."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from canary_mw import RuleError, parse_rules
from canary_mw.admin.api import admin_app
from canary_mw.admin.cli import main
from canary_mw.regex import Regex
from canary_mw.stores import Store, store_from_url
from tests.support.contract import raw
from tests.support.engines import Driven, eventually, facts
from tests.support.servers import RedisServer

TOKEN = "s3cret-token-for-tests"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


def tenant_rule(pattern: str, rule_id: str = "tenant") -> dict[str, Any]:
    # Nested under "any" so the error must name the path inside the condition, not just "when".
    when = {"any": [{"ip": ["192.0.2.1"]}, {"header": "X-Tenant", "matches": pattern}]}
    return {"id": rule_id, "when": when, "target": "canary"}


# -- linear time -----------------------------------------------------------------------------
# With Python's re, "^(a+)+$" against 40 "a"s and a "!" backtracks 2**40 times: hours. The
# check runs in a child process with a generous limit, so it fails cleanly (and does not hang
# the suite) on an engine that backtracks, and asserts no absolute time on one that does not.
LINEAR_CHECK = textwrap.dedent("""
    from canary_mw import ASGIFacts, Snapshot, decide, parse_rules
    rules = parse_rules({"rules": [
        {"id": "t", "when": {"header": "X-Tenant", "matches": "^(a+)+$"}},
        {"id": "p", "when": {"path_matches": "^/(a+)+$"}},
    ]})
    snapshot = Snapshot(ruleset=rules)
    def scope(tenant, path="/x"):
        return {"type": "http", "method": "GET", "path": path, "query_string": b"",
                "headers": [(b"x-tenant", tenant.encode())], "client": ("192.0.2.9", 1)}
    evil = "a" * 40 + "!"
    print(decide(ASGIFacts(scope(evil)), snapshot, {}).target,
          decide(ASGIFacts(scope("b", "/" + evil)), snapshot, {}).target,
          decide(ASGIFacts(scope("a" * 40)), snapshot, {}).target)
""")


def test_catastrophic_backtracking_pattern_is_evaluated_in_linear_time() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", LINEAR_CHECK],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("one 41-byte header stalled rule evaluation for over 10 s (backtracking)")
    assert done.returncode == 0, done.stderr
    # No match for the evil inputs, a match for the plain one: semantics kept, not short-cut.
    assert done.stdout.split() == ["stable", "stable", "canary"]


# -- search semantics (docs/rules.md) --------------------------------------------------------
SEMANTICS = [
    ("Mobile|Android", "Mozilla/5.0 (Linux; Android 14)", True),  # found anywhere: search
    ("^Android", "Mozilla/5.0 (Linux; Android 14)", False),
    ("(?i)android", "ANDROID", True),
    ("^tenant-[0-9]+$", "tenant-42", True),
    ("^tenant-[0-9]+$", "tenant-42x", False),
    ("é+$", "café", True),  # UTF-8, not bytes: é is one character
    ("^.{4}$", "café", True),
    ("x", "\udcff", False),  # a lone surrogate must not make the decision raise
]


@pytest.mark.parametrize(("pattern", "value", "expected"), SEMANTICS)
def test_matches_searches_like_the_docs_say(pattern: str, value: str, expected: bool) -> None:
    assert Regex(pattern).search(value) is expected


# -- refused on write ------------------------------------------------------------------------
REFUSED = [
    pytest.param(r"(a)\1", "backreference", id="backreference"),
    pytest.param("(?=a)", "lookaround", id="lookahead"),
    pytest.param("(?<!a)b", "lookaround", id="lookbehind"),
]


def assert_names_rule_field_and_why(message: str, field: str = "when.any[1].matches") -> None:
    assert "rule 'tenant'" in message
    assert f"field '{field}'" in message
    assert "RE2" in message
    assert "linear time" in message
    assert "https://github.com/google/re2/wiki/Syntax" in message


@pytest.mark.parametrize(("pattern", "why"), REFUSED)
def test_python_api_refuses(pattern: str, why: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules({"rules": [tenant_rule(pattern)]})
    assert (caught.value.rule, caught.value.field) == ("tenant", "when.any[1].matches")
    assert_names_rule_field_and_why(str(caught.value))
    assert why in str(caught.value)

    path_rule = {"id": "tenant", "when": {"path_matches": pattern}}
    with pytest.raises(RuleError) as caught:
        parse_rules([path_rule])
    assert_names_rule_field_and_why(str(caught.value), "when.path_matches")


@pytest.fixture
def store(redis_srv: RedisServer, prefix: str) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=prefix)
    yield handle
    handle.close()


@pytest.mark.parametrize(("pattern", "why"), REFUSED)
def test_store_refuses_and_writes_nothing(store: Store, pattern: str, why: str) -> None:
    with pytest.raises(RuleError) as caught:
        store.add_rule(tenant_rule(pattern))
    assert_names_rule_field_and_why(str(caught.value))
    assert store.get_rules() is None
    assert store.get_config().version == 0


@pytest.mark.parametrize(("pattern", "why"), REFUSED)
def test_cli_refuses_with_one_line(
    redis_srv: RedisServer, prefix: str, store: Store, pattern: str, why: str
) -> None:
    when = json.dumps(tenant_rule(pattern)["when"])
    result = CliRunner().invoke(
        main,
        ["--store", f"{redis_srv.url}?prefix={prefix}", "rule", "add", "--id", "tenant",
         "--when", when],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert_names_rule_field_and_why(result.output)
    assert store.get_rules() is None


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app(store, token=TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize(("pattern", "why"), REFUSED)
async def test_admin_api_refuses_with_422(
    api: httpx.AsyncClient, store: Store, pattern: str, why: str
) -> None:
    response = await api.post("/rules", json={"rule": tenant_rule(pattern)}, headers=GOOD)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "rules", "tenant", "when", "any", "1", "matches"]
    assert_names_rule_field_and_why(detail["msg"])
    replaced = await api.put("/rules", json={"rules": [tenant_rule(pattern)]}, headers=GOOD)
    assert replaced.status_code == 422
    assert store.get_rules() is None


@pytest.mark.anyio
async def test_admin_api_accepts_the_backtracking_pattern(
    api: httpx.AsyncClient, store: Store
) -> None:
    response = await api.post("/rules", json={"rule": tenant_rule("^(a+)+$")}, headers=GOOD)
    assert response.status_code == 200, response.text
    stored = store.get_rules()
    assert stored is not None
    assert [rule.id for rule in stored.rules][-1] == "tenant"


# -- written straight into Redis ---------------------------------------------------------------
STORED = [
    pytest.param(json.dumps([tenant_rule("(?=a)")]), "lookaround", id="lookahead"),
    pytest.param("[" * 200_000, "nests too deeply", id="200k-deep"),
]


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
@pytest.mark.parametrize(("document", "logged"), STORED)
async def test_refused_pattern_in_redis_keeps_the_last_good_rules(
    flavour: str,
    redis_srv: RedisServer,
    prefix: str,
    store_logs: pytest.LogCaptureFixture,
    document: str,
    logged: str,
) -> None:
    writer = store_from_url(redis_srv.url, prefix=prefix)
    writer.set_rules({"rules": [{"id": "office", "when": {"ip": ["198.51.100.0/24"]}}]})
    driven = Driven(flavour, redis_srv.url, prefix, poll_interval=0.05)
    try:
        assert await driven.start()
        office = facts("198.51.100.1")
        assert (await driven.decide(office)).rule_id == "office"

        raw(redis_srv.url, "HSET", f"{prefix}config", "rules", document)
        target = driven.engine.refreshes + 2

        async def reread() -> bool:
            return driven.engine.refreshes >= target

        await eventually(reread, timeout=2.0, what="two refreshes")
        decision = await driven.decide(office)
        assert (decision.target, decision.rule_id) == ("canary", "office")
        errors = [r.getMessage() for r in store_logs.records if r.levelno >= logging.ERROR]
        assert sum("invalid rules" in m and logged in m for m in errors) == 1, errors
    finally:
        await driven.close()
        writer.close()
