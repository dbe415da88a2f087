"""``canary-mw demo`` as a newcomer runs it: it answers version 1, then version 2 after the
printed command, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support.servers import RedisServer, free_port, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


class Demo:
    def __init__(self, env: dict[str, str]):
        self.port, self.canary_port = free_port(), free_port()
        self.output = Path(tempfile.mkstemp(prefix="demo-", suffix=".log")[1])
        with self.output.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "canary_mw", "demo", "--port", str(self.port),
                 "--canary-port", str(self.canary_port)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: "Ctrl-C stops" in self.text(), timeout=20, what="the demo to start")

    def text(self) -> str:
        if self.process.poll() is not None and "Ctrl-C" not in self.output.read_text():
            raise AssertionError(f"the demo exited:\n{self.output.read_text()}")
        return self.output.read_text()

    def answer(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/").text

    def children(self) -> set[int]:
        pids: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            pids.update(int(p) for p in (task / "children").read_text().split())
        return pids

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(20)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CANARY_MW_STORE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def printed_command(text: str, action: str) -> list[str]:
    line = next(line for line in text.splitlines() if "redis-cli" in line and action in line)
    return shlex.split(line.split("#")[0])


def test_demo_with_a_private_redis_server() -> None:
    demo = Demo(base_env())
    try:
        assert "private redis-server" in demo.text()
        children = demo.children()
        assert children, "the private redis-server should be a child of the demo"
        assert demo.answer() == "This is version 1\n"
        subprocess.run(
            printed_command(demo.text(), "SADD canary:set:ips"), check=True, capture_output=True
        )
        wait_until(lambda: demo.answer() == "This is version 2\n", timeout=1, what="version 2")
        subprocess.run(
            printed_command(demo.text(), "SREM canary:set:ips"), check=True, capture_output=True
        )
        wait_until(lambda: demo.answer() == "This is version 1\n", timeout=1, what="version 1")
        # The printed canary-mw line, as a shell runs it (VAR=value command).
        line = next(line for line in demo.text().splitlines() if "canary-mw ip add" in line)
        assignment, *command = shlex.split(line)
        name, _, value = assignment.partition("=")
        assert name == "CANARY_MW_STORE"
        executable = str(Path(sys.executable).with_name(command[0]))
        subprocess.run([executable, *command[1:]], check=True, capture_output=True,
                       env={**os.environ, name: value})  # fmt: skip
        wait_until(lambda: demo.answer() == "This is version 2\n", timeout=1, what="canary-mw")
    finally:
        code = demo.interrupt()
    assert code == 0
    assert "demo stopped" in demo.output.read_text()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived the demo"


@pytest.mark.parametrize("variable", ["CANARY_MW_STORE", "REDIS_URL"])
def test_demo_uses_the_store_variable_when_set(redis_srv: RedisServer, variable: str) -> None:
    demo = Demo({**base_env(), variable: redis_srv.url})
    client = redis_srv.client()
    try:
        assert f"Using Redis from {variable}: {redis_srv.url}" in demo.text()
        assert not demo.children()  # nothing to start
        client.sadd("canary:set:users", "demo-user")
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{demo.port}/",
                                     headers={"Cookie": "canary_user=demo-user"}).text
                   == "This is version 2\n", timeout=1, what="the VIP cookie")  # fmt: skip
    finally:
        client.delete("canary:set:users", "canary:config")
        assert demo.interrupt() == 0


def test_demo_falls_back_to_memory_and_says_so() -> None:
    env = {**base_env(), "PATH": tempfile.mkdtemp()}  # no redis-server to be found
    demo = Demo(env)
    try:
        assert "in-process memory store" in demo.text()
        assert demo.answer() == "This is version 1\n"
        assert demo.process.stdin is not None
        demo.process.stdin.write(b"ip add 127.0.0.1\n")
        demo.process.stdin.flush()
        wait_until(lambda: demo.answer() == "This is version 2\n", timeout=1, what="typed command")
        assert re.search(r"ip add: 1 changed", demo.text())
    finally:
        assert demo.interrupt() == 0


def test_a_port_in_use_names_the_demo_option() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**base_env(), "CANARY_MW_STORE": "memory://"}
        result = subprocess.run(
            [sys.executable, "-m", "canary_mw", "demo", "--port", str(port),
             "--canary-port", str(free_port())],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stdout
    assert "canary-mw demo --port " in result.stdout
