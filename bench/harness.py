"""Servers, load generators and measurements for the benchmark (Linux: reads /proc)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def peak_rss_mib(pids: list[int]) -> float:
    """Largest VmHWM among the processes (each worker's own peak), in MiB."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


class Server:
    """A server process (tree) we start, measure and stop."""

    def __init__(
        self, name: str, command: list[str], *, port: int, env: dict[str, str] | None = None
    ):
        self.name = name
        self.port = port
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{safe}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for_port(port)
        except RuntimeError:
            raise RuntimeError(f"{name} did not start:\n{self.log.read_text()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.unlink(missing_ok=True)


def uvicorn(app: str, port: int, *, factory: bool = False) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--http", "httptools", "--loop", "uvloop",
            *(["--factory"] if factory else [])]  # fmt: skip


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    latencies: list[tuple[float, float, bool]] = field(default_factory=list)  # (t, s, ok)


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT[match.group(2)]


def wrk(url: str, connections: int, seconds: float, script: str | None = None) -> Load:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if script:
        path = Path(tempfile.mkstemp(suffix=".lua")[1])
        path.write_text(script)
        command[1:1] = ["-s", str(path)]
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return Load(rps, _ms(percentile["50"]), _ms(percentile["99"]), requests, errors)


async def _client(
    port: int, path: str, headers_for: object, deadline: float, out: list[tuple[float, float, bool]]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    number = 0
    try:
        while time.monotonic() < deadline:
            number += 1
            extra = headers_for(number) if callable(headers_for) else ""  # type: ignore[operator]
            request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode()
            start = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            ok = head.startswith(b"HTTP/1.1 2")
            out.append((start, time.monotonic() - start, ok))
    finally:
        writer.close()


def pyload(
    port: int, connections: int, seconds: float, path: str = "/", headers_for: object = None
) -> Load:
    """A keep-alive HTTP/1.1 load generator: every latency, with the time it started."""
    samples: list[tuple[float, float, bool]] = []
    deadline = time.monotonic() + seconds

    async def main() -> None:
        await asyncio.gather(*(_client(port, path, headers_for, deadline, samples)
                               for _ in range(connections)))  # fmt: skip

    asyncio.run(main())
    return summarize(samples, seconds)


def summarize(samples: list[tuple[float, float, bool]], seconds: float) -> Load:
    latencies = sorted(latency for _, latency, _ in samples) or [0.0]

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    errors = sum(not ok for _, _, ok in samples)
    return Load(len(samples) / seconds, pct(0.5), pct(0.99), len(samples), errors, samples)


def start_redis(binary: str) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server on a free port, nothing saved, answering: (process, port)."""
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    wait_for_port(port)
    return process, port


def stop_redis(process: subprocess.Popen[bytes], directory: str) -> None:
    """Stop a redis-server we started (even a paused one) and remove its directory."""
    process.send_signal(signal.SIGCONT)
    process.terminate()
    process.wait(10)
    shutil.rmtree(directory, ignore_errors=True)


def have(binary: str) -> bool:
    return shutil.which(binary) is not None
