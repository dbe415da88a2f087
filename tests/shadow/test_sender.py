"""The copies' queue and workers in one process: whatever the canary does (here: accept and
never answer), waiting and in-flight copies stay bounded, the rest are dropped and counted,
and the tasks stay few; the Prometheus family."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from canary_mw import CanaryConfig, parse_mirror
from canary_mw.shadow.compare import Answer
from canary_mw.shadow.report import ShadowReport
from canary_mw.shadow.sender import AsyncSender, Job


@pytest.mark.anyio
async def test_a_canary_that_never_answers_cannot_grow_the_queue_or_the_tasks() -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(accept_and_hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = parse_mirror({"upstream": f"http://127.0.0.1:{port}", "queue": 5, "concurrency": 3})
    report = ShadowReport()
    sender = AsyncSender(CanaryConfig(canary_url="http://127.0.0.1:9").forward_policy(), report)
    job = Job(config, "GET /x/*", "GET", (b"/x/1", b""), [(b"host", b"shop")], "203.0.113.7",
              "http", b"", Answer(200))  # fmt: skip
    try:
        accepted = 0
        for _ in range(1000):
            accepted += sender.offer(job)
            await asyncio.sleep(0)  # let the workers take what they can
            assert sender.pending <= 5 + 3
            assert len(sender._workers) <= 3  # the worker tasks
        assert accepted <= 5 + 3
        assert report.totals["GET /x/*", "dropped"] == 1000 - accepted
        assert report.totals["GET /x/*", "sent"] == 0  # none answered, none judged yet
    finally:
        await sender.aclose()
        for writer in held:
            writer.close()
        server.close()
    assert not sender._workers  # closing cancelled every worker


def test_prometheus_family() -> None:
    report = ShadowReport()
    report.count("GET /a/*", "sent", 3)
    report.count("GET /a/*", "mismatch:body")
    samples = {
        (sample.labels["route"], sample.labels["outcome"]): sample.value
        for family in REGISTRY.collect() if family.name == "canary_mw_shadow"
        for sample in family.samples if sample.name == "canary_mw_shadow_total"
    }  # fmt: skip
    assert samples[("GET /a/*", "sent")] >= 3
    assert samples[("GET /a/*", "mismatch:body")] >= 1
