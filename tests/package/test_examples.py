"""The examples' README walkthroughs, run as written with real processes: the server commands
and the walkthrough lines (curl, canary-mw) are read out of each README, so the README and
what is tested cannot drift apart. Only the ports change (free ones) and the store (a private
Redis, exported as CANARY_MW_STORE just as the README says)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib

from tests.support.engines import redis_cli
from tests.support.routers import client_from
from tests.support.servers import AppServer, RedisServer, free_port, redis_server, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
# The README's programs, from this virtualenv (the same ones `pip install` puts on the PATH).
PROGRAMS = {
    "python3": [sys.executable],
    "uvicorn": [sys.executable, "-m", "uvicorn"],
    "gunicorn": [sys.executable, "-m", "gunicorn"],
    "flask": [sys.executable, "-m", "flask"],
}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def bash_blocks(readme: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", readme.read_text(), re.DOTALL)


def walkthrough_lines(example: str) -> list[str]:
    """The README's walkthrough block: server commands ending in ``&``, curl and canary-mw."""
    (block,) = [b for b in bash_blocks(EXAMPLES / example / "README.md") if "curl" in b]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def server_command(line: str, ports: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``VAR=value ... program args &`` → (env, argv), the README's ports swapped for free ones."""
    line = re.sub(r"\b(8000|8001)\b", lambda match: ports[match.group()], line)
    words = shlex.split(line.rstrip().removesuffix("&"))
    env = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, PROGRAMS[words[0]] + words[1:]


def canary_mw(store_url: str, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "canary-mw"), *args], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "CANARY_MW_STORE": store_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def request_of(line: str) -> tuple[dict[str, str], str]:
    """A README curl line → (headers, the version its comment says answers)."""
    words = shlex.split(line.split("#", maxsplit=1)[0])
    headers = {}
    for flag, value in itertools.pairwise(words):
        if flag == "--cookie":
            headers["Cookie"] = value
        elif flag == "-H":
            name, _, text = value.partition(":")
            headers[name.strip()] = text.strip()
    (version,) = re.findall(r"version (\d)", line.split("#", 1)[1])
    return headers, version


def settles(
    client: httpx.Client, url: str, headers: dict[str, str], expected: str, what: str
) -> None:
    # Two workers poll Redis independently: wait until ten answers in a row agree (new
    # connections each time, so both workers take part), within the promised second.
    wait_until(
        lambda: all(client.get(url, headers=headers).text == expected for _ in range(10)),
        timeout=1,
        what=what,
    )


@pytest.mark.parametrize("example", ["flask_app", "fastapi_app"])
def test_readme_walkthrough(example: str, redis: RedisServer) -> None:
    lines = walkthrough_lines(example)
    servers = [line for line in lines if line.rstrip().endswith("&")]
    assert len(servers) == 2, servers  # the canary, then stable
    ports = {"8001": str(free_port()), "8000": str(free_port())}
    started = []
    try:
        for line, port in zip(servers, (ports["8001"], ports["8000"]), strict=True):
            env, command = server_command(line, ports)
            server = AppServer(command, env={**env, "CANARY_MW_STORE": redis.url}, port=int(port))
            server.env["PYTHONPATH"] = str(EXAMPLES / example)  # the README runs from there
            started.append(server)
            server.start()
        url = f"http://127.0.0.1:{ports['8000']}/"
        steps = 0
        with client_from("127.0.0.1") as client:
            for line in lines:
                if line.startswith("canary-mw "):
                    canary_mw(redis.url, *shlex.split(line.split("#")[0])[1:])
                    steps += 1
                elif line.startswith("curl "):
                    headers, version = request_of(line)
                    settles(client, url, headers, f"This is version {version}\n", line)
                    steps += 1
        assert steps >= 10  # the walkthrough was found and run, not skipped
    finally:
        redis_cli(redis.port, "DEL", "canary:set:ips", "canary:set:users", "canary:config")
        for server in started:
            server.cleanup()


def stable_fastapi(redis: RedisServer, *, drop: str = "", **env: str) -> AppServer:
    """The README's stable FastAPI command, one worker, optionally without one flag."""
    (line,) = [line for line in walkthrough_lines("fastapi_app") if line.startswith("CANARY_URL=")]
    line = line.replace("--workers 2", "--workers 1")
    if drop:
        assert drop in line
        line = line.replace(drop, "")
    port = free_port()
    readme_env, command = server_command(line, {"8000": str(port), "8001": str(free_port())})
    server = AppServer(command, env={**readme_env, "CANARY_MW_STORE": redis.url, **env}, port=port)
    server.env["PYTHONPATH"] = str(EXAMPLES / "fastapi_app")
    return server


@pytest.mark.parametrize(("flags", "routed_as"), [("as documented", "127.0.0.1"),
                                                 ("uvicorn's default", "127.0.0.2")])  # fmt: skip
def test_uvicorn_proxy_headers(redis: RedisServer, flags: str, routed_as: str) -> None:
    """uvicorn's --proxy-headers (on by default) trusts 127.0.0.1 and rewrites the client
    address from X-Forwarded-For before CanaryRouter sees it; the README's --no-proxy-headers
    leaves that decision to trusted_proxies (empty here: the socket peer is the client)."""
    canary_mw(redis.url, "ip", "add", "127.0.0.2")
    drop = "" if flags == "as documented" else "--no-proxy-headers"
    server = stable_fastapi(redis, drop=drop, CANARY_URL=f"http://127.0.0.1:{free_port()}")
    try:
        server.start()
        with client_from("127.0.0.1") as client:
            response = client.get(f"{server.url}/", headers={"X-Forwarded-For": "127.0.0.2"})
        expected = "canary" if routed_as == "127.0.0.2" else "stable"
        assert response.headers["x-canary-version"] == expected
    finally:
        canary_mw(redis.url, "ip", "remove", "127.0.0.2")
        server.cleanup()


def test_lifespan_on_stops_at_a_configuration_error(redis: RedisServer) -> None:
    server = stable_fastapi(
        redis, CANARY_URL="http://127.0.0.1:9", TRUSTED_PROXIES='["not-an-address"]'
    )
    try:
        with pytest.raises(Exception, match="not-an-address"):
            server.start()
        assert "Application startup failed" in server.output()
    finally:
        server.cleanup()


def test_examples_have_their_own_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = " ".join(project["optional-dependencies"]["examples"])
    for package in ("uvicorn", "gunicorn", "flask", "fastapi"):
        assert package in extra
    for example in ("flask_app", "fastapi_app"):
        text = (EXAMPLES / example / "README.md").read_text()
        assert "pip install -e '../..[examples]'" in text
        assert "CANARY_STORE" not in text.replace("CANARY_MW_STORE", "")
        assert "CANARY_STORE" not in (EXAMPLES / example / "app.py").read_text().replace(
            "CANARY_MW_STORE", ""
        )


# -- the README's quick starts: files that run as written and show a switch ------------------
QUICK_STARTS = ["quickstart_fastapi", "quickstart_flask"]


def quick_start(name: str) -> tuple[str, list[str]]:
    """(the code after the docstring, the command lines in the docstring)."""
    text = (EXAMPLES / f"{name}.py").read_text()
    end = text.index('"""\n', 3)
    commands = [line for line in text[3:end].splitlines()[1:] if line.strip()]
    return text[end + 4 :].strip(), commands


@pytest.mark.parametrize("name", QUICK_STARTS)
def test_readme_shows_the_quick_start_files(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    code, commands = quick_start(name)
    assert f"```python\n{code}\n```" in readme
    assert "```bash\n" + "\n".join(commands) + "\n```" in readme
    # The documentation site's home page shows the same file through a snippet include.
    assert f'--8<-- "examples/{name}.py"' in (ROOT / "docs" / "index.md").read_text()


@pytest.mark.parametrize("name", QUICK_STARTS)
def test_quick_start_runs_as_written(name: str, redis: RedisServer) -> None:
    _, commands = quick_start(name)
    ports = {"8001": str(free_port()), "8000": str(free_port())}
    started = []
    checked = 0
    try:
        with client_from("127.0.0.1") as client:
            for line in commands:
                if line.startswith("export CANARY_MW_STORE="):
                    continue  # the private Redis stands in for "a Redis you may write to"
                if line.rstrip().split("#")[0].rstrip().endswith("&"):
                    code = line.split("#")[0]
                    port = next(
                        free for doc, free in ports.items() if re.search(rf"\b{doc}\b", code)
                    )
                    env, command = server_command(code, ports)
                    server = AppServer(command, env={**env, "CANARY_MW_STORE": redis.url,
                                                     "CANARY_URL": f"http://127.0.0.1:{ports['8001']}"},
                                       port=int(port))  # fmt: skip
                    started.append(server)
                    server.start()
                elif line.startswith("canary-mw "):
                    canary_mw(redis.url, *shlex.split(line.split("#")[0])[1:])
                elif line.startswith("curl "):
                    (expected,) = re.findall(r"X-Canary-Version: (\w+)", line)
                    url = f"http://127.0.0.1:{ports['8000']}/"

                    def served_by(url: str = url) -> str:
                        return client.get(url).headers["x-canary-version"]

                    wait_until(lambda: served_by() == expected, timeout=1, what=line)  # noqa: B023
                    checked += 1
        assert checked == 3  # stable, the switch to the canary, and back
    finally:
        redis_cli(redis.port, "DEL", "canary:set:ips", "canary:config")
        for server in started:
            server.cleanup()
