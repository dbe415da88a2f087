"""The canary-mw command line against a real Redis: every command, its output, and that bad
input gives one line on stderr, a non-zero exit, and writes nothing."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from canary_mw.admin.cli import main
from canary_mw.stores import Store, store_from_url
from tests.support.engines import redis_cli
from tests.support.servers import RedisServer, free_port


@pytest.fixture
def url(redis_srv: RedisServer, prefix: str) -> str:
    return f"{redis_srv.url}?prefix={prefix}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    handle = store_from_url(url)
    yield handle
    handle.close()


def cli(url: str, *args: str, stdin: str | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(main, ["--store", url, "--actor", "tester", *args], input=stdin)


def test_ip_commands(url: str, store: Store) -> None:
    result = cli(url, "ip", "add", "203.0.113.7", "10.1.0.0/16")
    assert (result.exit_code, result.output) == (0, "ip add to 'ips': 2 changed (version 1)\n")
    assert cli(url, "ip", "add", "--set", "office", "192.0.2.0/24").exit_code == 0
    assert cli(url, "ip", "list").output == "10.1.0.0/16\n203.0.113.7\n"
    assert cli(url, "ip", "remove", "203.0.113.7").output.startswith(
        "ip remove from 'ips': 1 changed"
    )
    assert store.members("office") == {"192.0.2.0/24"}


def test_user_commands_in_bulk(url: str, store: Store, tmp_path: Path) -> None:
    users = tmp_path / "vips.txt"
    users.write_text("# VIP customers\nu1\nu2\n\nu3\n")
    assert cli(url, "user", "add", "--file", str(users), "u4").output == (
        "user add to 'users': 4 changed (version 1)\n"
    )
    assert cli(url, "user", "remove", "--file", "-", stdin="u1\nu2\n").exit_code == 0
    assert store.members("users") == {"u3", "u4"}
    many = "\n".join(f"user-{n}" for n in range(12_000))  # more than one atomic chunk
    assert cli(url, "user", "add", "--set", "beta", "--file", "-", stdin=many).exit_code == 0
    assert len(store.members("beta")) == 12_000


def test_rule_commands(url: str, store: Store, tmp_path: Path) -> None:
    when = '{"header": "X-QA", "present": true}'
    result = cli(url, "rule", "add", "--id", "qa", "--when", when, "--position", "0")
    assert result.output == "rule add 'qa': rules +qa (were the defaults) (version 1)\n"
    assert cli(url, "rule", "list").output.splitlines()[0] == (
        '1. qa -> canary: {"header": "X-QA", "present": true}'
    )
    assert json.loads(cli(url, "rule", "show", "qa").output)["when"] == json.loads(when)
    assert (
        cli(url, "rule", "remove", "users").output
        == "rule remove 'users': rules -users (version 2)\n"
    )
    exported = tmp_path / "rules.json"
    assert cli(url, "rules", "export", str(exported)).exit_code == 0
    document = json.loads(exported.read_text())
    assert [rule["id"] for rule in document["rules"]] == ["qa", "ips"]
    document["rules"].reverse()
    exported.write_text(json.dumps(document))
    assert cli(url, "rules", "import", str(exported)).output == (
        "rules import (2 rules): rules reordered (version 3)\n"
    )
    assert [rule.id for rule in store.get_rules().rules] == ["ips", "qa"]


def test_percent_mode_and_upstreams(url: str, store: Store) -> None:
    assert cli(url, "percent", "set", "5", "--by", "cookie:uid").exit_code == 0
    assert cli(url, "percent", "set", "12.5").output.startswith(
        "percent 'percent' = 12.5%: rules ~percent"
    )
    (rule,) = [r for r in store.get_rules().rules if r.id == "percent"]
    assert rule.spec["when"] == {"percent": 12.5, "by": "cookie:uid", "salt": "percent"}
    assert cli(url, "mode", "off").output == "set: mode rules -> off (version 3)\n"
    assert cli(url, "mode", "off").output == "set: nothing changed (version 3)\n"
    assert cli(url, "upstream", "set", "canary", "http://10.0.0.5:8000").exit_code == 0
    assert (
        cli(
            url, "upstream", "set", "canary", "http://10.0.0.6:8000", "--host", "shop.example"
        ).exit_code
        == 0
    )
    assert cli(url, "upstream", "remove", "canary", "--host", "shop.example").exit_code == 0
    assert store.get_config().describe()["upstreams"] == {"canary": {"url": "http://10.0.0.5:8000"}}


def test_status_history_and_rollback(url: str, store: Store) -> None:
    cli(url, "ip", "add", "203.0.113.7")
    cli(url, "mode", "all")
    cli(url, "rule", "add", "--id", "qa", "--when", '{"method": "GET"}')
    text = cli(url, "status").output
    assert "mode     all  (everyone on the canary)" in text
    assert "sets     ips 1, users 0" in text
    data = json.loads(cli(url, "status", "--json").output)
    assert (data["version"], data["mode"], data["rules_source"]) == (3, "all", "store")
    lines = cli(url, "history", "--limit", "2").output.splitlines()
    assert lines[0].startswith("v3")
    assert lines[0].endswith("tester               rule add qa")
    assert lines[1].strip() == "rules +qa (were the defaults)"
    entries = json.loads(cli(url, "history", "--json").output)
    assert [e["action"] for e in entries] == ["rule add", "mode", "ip add"]
    assert cli(url, "rollback", "1").output == (
        "rollback: mode all -> rules, rules -qa (now the defaults) (version 4)\n"
    )
    assert store.get_config().mode is None


BAD = [
    (["ip", "add", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
    (["ip", "add", "not-an-ip"], "not an IP address"),
    (["user", "add", "--set", "bad name", "u1"], "set names"),
    (["user", "add"], "at least one member"),
    (["rule", "add", "--id", "x", "--when", '{"ip": ["x"]}'], "rule 'x', field 'when.ip[0]'"),
    (["rule", "add", "--id", "x", "--when", "{not json"], "--when is not JSON"),
    (["rule", "remove", "absent"], "no rule with id 'absent'"),
    (["rule", "show", "absent"], "no rule with id 'absent'"),
    (["rules", "import", "-"], "not valid JSON"),
    (["percent", "set", "150"], "from 0 to 100"),
    (["upstream", "set", "canary", "ftp://x"], "http:// or https://"),
    (["upstream", "remove", "nothing"], "no upstream 'nothing'"),
    (["rollback", "99"], "does not exist yet"),
    (["mode", "sometimes"], "Invalid value"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(
    url: str, store: Store, args: list[str], message: str
) -> None:
    store.set_mode("off")  # version 1
    result = cli(url, *args, stdin="{nope")
    assert result.exit_code != 0
    assert message in result.output
    if result.exit_code == 1:  # our errors: exactly one line
        assert len(result.output.strip().splitlines()) == 1
        assert result.output.startswith("error: ")
    assert store.get_config().version == 1
    assert len(store.history(10)) == 1


def test_unreachable_store_is_one_line() -> None:
    result = cli("redis://127.0.0.1:9/0", "mode", "off")
    assert result.exit_code == 1
    assert result.output.startswith("error: Redis failed")


# -- the documented commands, run as a user runs them: the installed script, a real process --
CANARY_MW = str(Path(sys.executable).with_name("canary-mw"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # CANARY_MW_STORE points at a closed port: a command that ignored the --store it was
    # given fails loudly instead of writing to some Redis on 6379.
    environment = {**os.environ, "CANARY_MW_STORE": "redis://127.0.0.1:9/0", **(env or {})}
    environment.pop("CANARY_MW_ACTOR", None)
    return subprocess.run(
        [CANARY_MW, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


EXIT_STATUS = [
    # A command line click cannot parse: its usage message, exit status 2.
    (["mode", "sideways"], 2, "'sideways' is not one of 'off', 'rules', 'all'"),
    (["history", "--limit", "abc"], 2, "'abc' is not a valid integer"),
    (["ip", "add", "--no-such-option", "1.2.3.4"], 2, "No such option"),
    # A value canary_mw refuses: one line on stderr, exit status 1.
    (["percent", "set", "-1"], 1, "expected a number from 0 to 100, got -1"),
    (["rule", "add", "--id", "x", "--when", "{bad"], 1, "--when is not JSON"),
    (["history", "--limit", "0"], 1, "count must be a positive integer"),
    (["ip", "add", "10.0.0.1/8"], 1, "did you mean 10.0.0.0/8"),
]


@pytest.mark.parametrize(
    ("args", "status", "message"), EXIT_STATUS, ids=[" ".join(a) for a, _, _ in EXIT_STATUS]
)
def test_exit_status_rule(
    url: str, store: Store, args: list[str], status: int, message: str
) -> None:
    store.set_mode("off")  # version 1
    result = run("--store", url, *args)
    assert (result.returncode, result.stdout) == (status, "")
    assert message in result.stderr
    if status == 1:
        assert result.stderr.startswith("error: ")
        assert len(result.stderr.splitlines()) == 1
    else:
        assert result.stderr.startswith("Usage: canary-mw ")
    assert (store.get_config().version, len(store.history(10))) == (1, 1)


def test_docs_state_the_exit_status_rule() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    text = " ".join(page.read_text().split())
    assert "**1** a value was refused" in text
    assert "**2** the command line is malformed" in text
    assert "exit status 1, nothing written" not in text  # the old, one-code rule
    help_text = run("--help").stdout
    assert "1 a value was refused" in help_text
    assert "2 the command line is malformed" in help_text


def test_store_option_after_the_command(url: str, store: Store) -> None:
    result = run("ip", "add", "--store", url, "--actor", "late", "1.2.3.4")
    assert (result.returncode, result.stderr) == (0, "")
    assert store.members("ips") == {"1.2.3.4"}
    assert store.history(1)[0].actor == "late"
    # after the command wins over before it
    result = run("--store", "redis://127.0.0.1:9/0", "mode", "off", "--store", url)
    assert result.returncode == 0, result.stderr
    assert store.get_config().mode == "off"


def test_memory_store_warns_that_no_app_can_see_it() -> None:
    result = run("--store", "memory://", "ip", "add", "1.2.3.4")
    assert result.returncode == 0
    assert "no running app can see it" in result.stderr
    assert "CANARY_MW_STORE" in result.stderr


def test_adding_an_address_already_there_bumps_nothing(url: str, store: Store) -> None:
    assert run("--store", url, "ip", "add", "203.0.113.7").stdout == (
        "ip add to 'ips': 1 changed (version 1)\n"
    )
    assert run("--store", url, "ip", "add", "203.0.113.7").stdout == (
        "ip add to 'ips': nothing changed (version 1)\n"
    )
    assert run("--store", url, "mode", "rules").stdout == "set: nothing changed (version 1)\n"
    assert len(json.loads(run("--store", url, "history", "--json").stdout)) == 1


# -- status with invalid data in the store: say what is wrong and what is in force, exit 0 --
def test_status_flags_an_invalid_mode(url: str, redis_srv: RedisServer, prefix: str) -> None:
    redis_cli(redis_srv.port, "HSET", f"{prefix}config", "mode", "banana")
    result = run("--store", url, "status")
    assert result.returncode == 0, result.stderr
    assert "mode     'banana'  INVALID (see problems)" in result.stdout
    assert f"  {prefix}config mode: 'banana' is not one of off|rules|all" in result.stdout
    assert (
        "in force: routers keep the mode they last read as valid; a router started since uses 'rules'"
        in result.stdout
    )
    data = json.loads(run("--store", url, "status", "--json").stdout)
    assert (data["mode"], data["mode_valid"]) == ("banana", False)


def test_status_survives_a_config_of_the_wrong_type(
    url: str, redis_srv: RedisServer, prefix: str
) -> None:
    redis_cli(redis_srv.port, "SET", f"{prefix}config", "oops")
    result = run("--store", url, "status")
    assert (result.returncode, result.stderr) == (0, "")
    assert f"  {prefix}config: cannot be read as a hash: WRONGTYPE" in result.stdout
    assert "a router started since uses mode 'rules', its default rules" in result.stdout
    assert f"fix: redis-cli DEL {prefix}config" in result.stdout


def test_status_flags_an_invalid_ip_list(
    url: str, store: Store, redis_srv: RedisServer, prefix: str
) -> None:
    key = f"{prefix}ip_lists"
    store.set_rules({"rules": [{"id": "legacy", "when": {"legacy_ip_list": {"key": key}}}]})
    redis_cli(redis_srv.port, "SET", key, '["203.0.113.7", "10.1.0.0/16"]')
    assert f"ip list  {key} (db 0): 2 entries" in run("--store", url, "status").stdout
    redis_cli(redis_srv.port, "SET", key, "[not json")
    result = run("--store", url, "status")
    assert result.returncode == 0
    assert f"ip list  {key} (db 0): INVALID (see problems)" in result.stdout
    assert f"IP list key '{key}' (db 0): not JSON" in result.stdout
    assert "a router started since has none, so conditions on it are unknown" in result.stdout


# -- the admin server, as docs/admin-api.md starts and calls it ---------------------------
def docs_admin_block() -> str:
    page = (Path(__file__).resolve().parents[2] / "docs" / "admin-api.md").read_text()
    (block,) = [
        b for b in re.findall(r"```bash\n(.*?)```", page, re.DOTALL) if "canary-mw admin" in b
    ]
    return block


def test_docs_admin_snippet_works_as_written(url: str, store: Store, tmp_path: Path) -> None:
    port = str(free_port())
    block = docs_admin_block().replace("8080", port).replace("0.0.0.0", "127.0.0.1")
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("canary-mw admin"))
    # The page's lines, plus what a person does by eye: wait until the banner is printed
    # (bounded), and stop the server at the end.
    banner = tmp_path / "banner.txt"
    lines[start] = lines[start].replace(" &", f" > {banner} &", 1)
    wait = f"for _ in $(seq 400); do grep -q OpenAPI {banner} && break; sleep 0.05; done"
    script = "\n".join([*lines[: start + 1], wait, *lines[start + 1 :], "kill %1", "wait"])
    env = {
        **os.environ,
        "CANARY_MW_STORE": url,
        "PATH": f"{Path(CANARY_MW).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 143), result.stderr  # 143: the server's SIGTERM status
    replies, text, decoder = [], result.stdout.strip(), json.JSONDecoder()
    while text:  # curl prints the JSON replies back to back, no newline between them
        reply, end = decoder.raw_decode(text)
        replies.append(reply)
        text = text[end:].strip()
    assert [reply["changed"] for reply in replies] == [True, True], result.stdout
    assert store.get_config().mode == "off"
    assert store.members("ips") == {"203.0.113.7"}
    printed = banner.read_text()
    assert f"canary-mw admin API on http://127.0.0.1:{port}" in printed
    assert "auth     bearer token required" in printed
    assert f"OpenAPI  http://127.0.0.1:{port}/openapi.json" in printed
    assert f"console  http://127.0.0.1:{port}/ (the page for operators" in printed


def test_admin_without_a_token_says_how_to_run(url: str) -> None:
    result = run(
        "--store", url, "admin", "--port", str(free_port()), env={"CANARY_MW_ADMIN_TOKEN": ""}
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1


def test_admin_short_token_names_the_option(url: str) -> None:
    result = run("--store", url, "admin", "--token", "abc")
    assert result.returncode == 1
    assert result.stderr == (
        "error: the admin token (--token, --token-file or CANARY_MW_ADMIN_TOKEN) must be at "
        "least 16 characters; make one with: openssl rand -hex 24\n"
    )
    assert "'api'" not in result.stderr


def test_admin_port_in_use_is_one_line(url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("--store", url, "admin", "--port", str(port), "--token", "x" * 20)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pick another "
        "with --port or --host\n"
    )


def test_rule_add_with_a_bad_id_names_the_id(url: str, store: Store) -> None:
    result = run("--store", url, "rule", "add", "--id", "bad id!", "--when", '{"method": "GET"}')
    assert result.returncode == 1
    assert result.stderr == (
        "error: field 'id': 'bad id!' is not a valid rule id: 1-64 of [A-Za-z0-9_.:-] "
        "starting with a letter or digit\n"
    )
    assert store.get_config().version == 0


def test_a_target_no_upstream_names_warns_at_write_time(url: str, store: Store) -> None:
    when = '{"method": "GET"}'
    result = run("--store", url, "rule", "add", "--id", "x", "--when", when, "--target", "nowhere")
    assert result.returncode == 0  # routers may name it in their own configuration
    assert result.stdout.startswith("rule add 'x': rules +x")
    assert (
        "warning: rule 'x' targets 'nowhere', which no upstream in the store names" in result.stderr
    )
    assert "canary-mw upstream set nowhere URL" in result.stderr
    assert run("--store", url, "upstream", "set", "nowhere", "http://10.0.0.9:8000").returncode == 0
    quiet = run("--store", url, "rule", "add", "--id", "y", "--when", when, "--target", "nowhere")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    canary = run("--store", url, "rule", "add", "--id", "z", "--when", when)
    assert (canary.returncode, canary.stderr) == (0, "")
