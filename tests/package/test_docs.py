"""The documentation site (docs/) and the README, held to what they say: every command-line
session prints what the page shows, every ``redis-cli`` / ``canary-mw`` line runs as written
and does what its page says, every Python snippet runs, and every option, command, endpoint,
Redis key and metric the code has is named on its page."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from starlette.applications import Starlette

import canary_mw
from canary_mw import CanaryRouter, CanaryWSGI
from canary_mw.admin.cli import main as cli_main
from canary_mw.admin.openapi import OPENAPI
from canary_mw.config import CONFIG_OPTIONS
from canary_mw.engine import ENGINE_OPTIONS, Engine
from canary_mw.facts import WSGIFacts
from canary_mw.health import HealthCheck
from canary_mw.metrics import Metrics
from canary_mw.stores import Store, store_from_url
from canary_mw.stores.layout import Layout
from tests.support.servers import RedisServer, redis_binary, redis_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CANARY_MW = str(Path(sys.executable).parent / "canary-mw")


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.DOTALL)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of our own: the pages use the default ``canary:`` prefix and db 2."""
    with redis_server() as server:
        yield server


@pytest.fixture
def shell_env(own_redis: RedisServer, tmp_path: Path) -> dict[str, str]:
    """What an operator's shell has: ``canary-mw`` on the PATH, ``CANARY_MW_STORE`` set, and
    ``redis-cli`` reaching our server (a wrapper adding ``-p``, the one thing not as written)."""
    wrapper = tmp_path / "bin" / "redis-cli"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {redis_binary("redis-cli")} -p {own_redis.port} "$@"\n')
    wrapper.chmod(0o755)
    path = f"{wrapper.parent}:{Path(CANARY_MW).parent}:{os.environ['PATH']}"
    return {
        **os.environ,
        "PATH": path,
        "CANARY_MW_STORE": own_redis.url,
        "CANARY_MW_ACTOR": "alice@laptop",
    }


def sh(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# -- console sessions: `$ command` then what it prints ------------------------------------
SESSION_PAGES = ["cli.md", "history.md"]
_VARIABLE = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"), "<time>"),
    (re.compile(r'"\d{10,}-\d+"'), '"<stream id>"'),
    (re.compile(r"redis://127\.0\.0\.1:\d+/0"), "<store>"),
]


def normalized(text: str) -> str:
    for pattern, placeholder in _VARIABLE:
        text = pattern.sub(placeholder, text)
    return text


def session(page: Path) -> list[tuple[str, str]]:
    """(command, the output shown under it) for every ``$`` line of the page's console blocks."""
    steps: list[tuple[str, str]] = []
    for block in blocks(page, "console"):
        for line in block.splitlines(keepends=True):
            if line.startswith("$ "):
                steps.append((line[2:].strip(), ""))
            else:
                command, output = steps[-1]
                steps[-1] = (command, output + line)
    return steps


@pytest.mark.parametrize("name", SESSION_PAGES)
def test_console_session_prints_what_the_page_shows(name: str, shell_env: dict[str, str]) -> None:
    steps = session(DOCS / name)
    assert len(steps) >= 5
    for command, shown in steps:
        result = sh(command, shell_env)
        assert normalized(result.stdout + result.stderr) == normalized(shown), command
        assert result.returncode == (1 if shown.startswith("error: ") else 0), command


# -- redis-cli and canary-mw lines: run as written, and they do what the comment says -------
def store_for(server: RedisServer) -> Store:
    return store_from_url(server.url)


def check_effect(line: str, store: Store) -> None:
    """The state a documented line promises, read back through canary_mw's own store."""
    words = shlex.split(line.split("  #", maxsplit=1)[0])
    program, command = words[0], words[1:]
    if program == "canary-mw" and command[0] == "mode":
        assert store.get_config().mode == command[1], line
        return
    if program != "redis-cli" or command[0] == "-n":
        return
    verb, key, *rest = command
    if verb == "SADD" and key.startswith("canary:set:"):
        assert set(rest) <= store.members(key.removeprefix("canary:set:")), line
    elif verb == "SREM" and key.startswith("canary:set:"):
        assert not set(rest) & store.members(key.removeprefix("canary:set:")), line
    elif verb == "HSET" and rest[0] == "mode":
        assert store.get_config().mode == rest[1], line
    elif verb == "HSET" and rest[0] == "rules":
        stored = store.get_rules()
        assert stored is not None, line
        assert [rule.id for rule in stored.rules] == [
            rule["id"] for rule in json.loads(rest[1])["rules"]
        ], line
    elif verb == "HDEL" and rest == ["rules"]:
        assert store.get_rules() is None, line


def operator_blocks() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for index, block in enumerate(blocks(page, "bash")):
            lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
            if lines and all(line.startswith(("redis-cli ", "canary-mw mode ")) for line in lines):
                found.append((f"{page.name}#{index}", block))
    return found


OPERATOR_BLOCKS = operator_blocks()


def test_the_operator_blocks_are_found() -> None:
    names = {name.partition("#")[0] for name, _ in OPERATOR_BLOCKS}
    assert {"README.md", "redis.md", "history.md", "routing.md"} <= names


@pytest.mark.parametrize(("name", "block"), OPERATOR_BLOCKS, ids=[n for n, _ in OPERATOR_BLOCKS])
def test_operator_lines_run_as_written(
    name: str, block: str, shell_env: dict[str, str], own_redis: RedisServer
) -> None:
    store = store_for(own_redis)
    try:
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip():
                continue
            result = sh(line, shell_env)
            assert result.returncode == 0, (line, result.stderr)
            assert not result.stdout.startswith("(error)"), (line, result.stdout)
            check_effect(line, store)
    finally:
        store.close()


def test_openresty_data_routes_as_the_page_says(
    shell_env: dict[str, str], own_redis: RedisServer
) -> None:
    """docs/redis.md: the classic keys and white-list, read by the stored legacy leaves."""
    page = DOCS / "redis.md"
    data, document = [b for b in blocks(page, "bash") if "legacy" in b or "ip_lists" in b][:2]
    for line in (data + document).replace("\n  ", " ").splitlines():
        if line.strip():
            result = sh(line, shell_env)
            assert result.returncode == 0, (line, result.stderr)
    engine = Engine(store_for(own_redis))
    try:
        assert engine.start(wait=5)
        for address, target in [
            ("203.0.113.7", "canary"), ("10.1.2.3", "canary"), ("198.51.100.1", "stable")
        ]:  # fmt: skip
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": address}
            assert engine.decide(WSGIFacts(environ)).target == target, address
    finally:
        engine.close()


# -- Python snippets run --------------------------------------------------------------------
def python_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for index, block in enumerate(blocks(page, "python")):
            if "--8<--" not in block:  # an included file: tests/package/test_examples.py runs those
                found.append((f"{page.name}#{index}", block))
    return found


PYTHON_BLOCKS = python_blocks()


@pytest.mark.parametrize(("name", "source"), PYTHON_BLOCKS, ids=[n for n, _ in PYTHON_BLOCKS])
def test_python_snippet_runs(
    name: str, source: str, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANARY_MW_STORE", own_redis.url)
    monkeypatch.setenv("CANARY_MW_ADMIN_TOKEN", "a-token-for-the-docs-tests")
    monkeypatch.setenv("CANARY_MW_STICKY_SECRET", "a-sticky-secret-for-the-docs-tests")
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, object] = {"__name__": "snippet"}
    result = eval(code, namespace)  # the page's own code, as a reader runs it
    if inspect.iscoroutine(result):
        asyncio.run(result)
    for value in namespace.values():
        if isinstance(value, Starlette):
            value.build_middleware_stack()  # where Starlette builds (and validates) middleware
    route = namespace.get("route")
    if inspect.iscoroutinefunction(route):  # docs/configuration.md's engine without a router
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
                 "headers": [], "client": ("203.0.113.7", 4321)}  # fmt: skip
        assert asyncio.run(route(scope)) == "stable"


# -- every option, command, endpoint, key and metric is named on its page ------------------
def mentioned(page: str, names: list[str]) -> list[str]:
    text = (DOCS / page).read_text()
    return [name for name in names if f"`{name}`" not in text and f"`{name} " not in text]


def test_every_router_option_is_documented() -> None:
    names = sorted(CONFIG_OPTIONS)
    for router in (CanaryRouter, CanaryWSGI):  # the options are CanaryConfig's, and config=
        assert list(inspect.signature(router.__init__).parameters)[2:] == ["config", "options"]
    assert mentioned("configuration.md", [*names, *sorted(ENGINE_OPTIONS)]) == []
    store_options = list(inspect.signature(store_from_url).parameters)[1:]
    assert mentioned("configuration.md", store_options) == []
    assert mentioned("health.md", list(inspect.signature(HealthCheck).parameters)) == []


def commands(
    group: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from commands(command, (*path, name))


def test_every_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    table = text.split("## Commands", 1)[1].split("## An example session", 1)[0]
    for path, command in commands(cli_main):
        leaf = path.split(" ")[-1] if path else ""
        if path and not isinstance(command, click.Group):
            assert f"`{path.split(' ')[0]} " in table or f"`{path}" in table, path
            assert leaf in table, path
        for param in command.params:
            if isinstance(param, click.Option):
                for option in param.opts:
                    assert option in table, f"{path} {option}"
            elif path and not isinstance(command, click.Group):
                assert param.name is not None


def test_every_endpoint_is_documented() -> None:
    text = (DOCS / "admin-api.md").read_text()
    documented = {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for method, path in re.findall(r"`(GET|PUT|POST|DELETE) (/[^`\s?]*)", text)
    }
    for template, operations in OPENAPI["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        for method in operations:
            if method.upper() not in {"GET", "PUT", "POST", "DELETE"}:
                continue
            assert any(
                verb == method.upper() and re.fullmatch(pattern, path.replace("{}", "x"))
                for verb, path in documented
            ), f"{method.upper()} {template}"


def test_every_redis_key_is_documented() -> None:
    layout = Layout()
    keys = [layout.config, layout.audit, layout.health, layout.traffic, layout.channel,
            layout.shadow_counts, layout.shadow_samples]  # fmt: skip
    keys.append(layout.set_key("NAME").replace("NAME", "<name>"))
    assert mentioned("redis.md", keys) == []


def test_every_metric_is_documented() -> None:
    names = []
    for family in Metrics(registry=None).collect():
        names.append(family.name + ("_total" if family.type == "counter" else ""))
    assert len(names) >= 8
    assert mentioned("metrics.md", names) == []


def test_every_public_constant_is_in_the_api_reference() -> None:
    text = (DOCS / "api.md").read_text()
    assert "::: canary_mw\n" in text  # the classes and functions, from their docstrings
    for name in canary_mw.__all__:
        value = getattr(canary_mw, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            assert f"`{name}`" in text, name


def test_readme_stays_short_and_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"
        if page.name not in ("index.md", "benchmark.md", "faults.md", "security.md"):
            assert f"(docs/{page.name}" in readme, f"the README does not link {page.name}"


# -- the generated pages: each written by its one documented command ------------------------
def test_fault_table_command_writes_the_faults_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import fault_table

    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "faults.md"
    page.write_text((DOCS / "faults.md").read_text())
    results = tmp_path / "results.json"
    row = {"test": "t", "area": "Redis", "case": "a case", "template": "a case",
           "expected": "0 failed", "outcome": "pass", "observed": "12 requests"}  # fmt: skip
    results.write_text(json.dumps([row]))
    monkeypatch.setattr(fault_table, "ROOT", tmp_path)
    monkeypatch.setattr(fault_table, "RESULTS", results)
    assert "pytest -m fault && python -m tests.support.fault_table" in page.read_text()
    assert fault_table.main() == 0
    text = page.read_text()
    table = text.split(fault_table.BEGIN)[1].split(fault_table.END)[0]
    assert table.strip().splitlines()[2:] == ["| Redis | a case | 0 failed | pass (12 requests) |"]
    assert (
        text.split(fault_table.BEGIN)[0]
        == (DOCS / "faults.md").read_text().split(fault_table.BEGIN)[0]
    )  # the page's own text is kept


def test_benchmark_command_writes_the_benchmark_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import readme

    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    row = {"name": "bare ASGI app", "connections": 10, "rps": 12345.0, "ratio_to_bare": 1.0,
           "cpu_us": 75.0}  # fmt: skip
    target = {"target": "a target", "measured": "1.00x", "met": True}
    (results / "latest.json").write_text(json.dumps({"rows": [row], "targets": [target]}))
    (results / "latest.md").write_text(
        "# canary_mw benchmark\n\nMachine: a box. Command: `python bench/run.py`. More.\n\n"
        "## ASGI\n\n| every | row |\n"
    )
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    assert (
        "python bench/readme.py       # rewrites docs/benchmark.md"
        in (DOCS / "performance.md").read_text()
    )
    assert readme.main() == 0
    text = (tmp_path / "docs" / "benchmark.md").read_text()
    assert text.startswith("# Benchmark\n")
    assert "| bare ASGI app (uvicorn) | 12,345 | - | 1.00x | - | 75 |" in text
    assert "| a target | 1.00x | yes |" in text
    assert text.count("# canary_mw benchmark") == 0
    assert text.rstrip().endswith("| every | row |")
    # The page in the repository has the same shape: written by this command, not by hand.
    committed = (DOCS / "benchmark.md").read_text()
    assert committed.split(readme.BEGIN)[0] == text.split(readme.BEGIN)[0]
