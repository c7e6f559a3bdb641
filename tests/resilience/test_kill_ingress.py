"""kill -9 of the ingress replica holding a caller's connection: its calls cannot go on, and the other replica ends
them cleanly (``call.ended`` with reason ``ingress_lost``, their records gone) within a few seconds; the calls of
the replica still alive are untouched. Two ``python -m voice_ingress`` processes on a NATS of the test's own,
callers speaking Twilio's protocol to each."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError
from voice_runtime.bus import Bus
from voice_schemas import CallRecord, Envelope, events, parse, subjects
from voice_schemas.streams import KV_CALLS

from bench.twilio_caller import TwilioCaller

from ..e2e.conftest import configure_agent
from .procs import start_service, stop_all

pytestmark = pytest.mark.integration
NUMBER = "+15550142"


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


@pytest.fixture
def ingresses(private_nats_url: str, tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    started = [start_service("voice_ingress", tmp_path, n, NATS_URL=private_nats_url, TWILIO_ALLOW_UNSIGNED="true")
               for n in ("ingress-a", "ingress-b")]
    yield started
    stop_all(p for p, _ in started)


async def test_the_calls_of_a_killed_ingress_are_ended_and_no_others(
        bus: Bus, ingresses: list[tuple[subprocess.Popen[bytes], str]]) -> None:
    await configure_agent(bus, NUMBER)
    (a_proc, a_url), (_, b_url) = ingresses
    ended: dict[str, Envelope[Any]] = {}

    async def keep(msg: Any) -> None:
        env = parse(msg.data)
        if isinstance(env.data, events.CallEnded):
            ended[env.call_id] = env

    await bus.subscribe("call.*.lifecycle.ended", keep)
    callers = []
    for url in (a_url, a_url, b_url):
        c = TwilioCaller(url, to=NUMBER)
        await c.dial()
        await c.connect()
        callers.append(c)
    on_a, on_b = [c.call_id for c in callers[:2]], callers[2].call_id
    assert None not in on_a and on_b is not None
    calls = (await bus.provision())[KV_CALLS.bucket]

    async def owner(call_id: str) -> str | None:
        try:
            entry = await calls.get(subjects.call_key(call_id))
        except KeyNotFoundError:
            return None
        return CallRecord.model_validate_json(entry.value).ingress_replica if entry.value else None

    deadline = time.monotonic() + 10
    while not all([await owner(c) for c in (*on_a, on_b)]):  # the connections have bound to their replicas
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await owner(on_a[0]) == await owner(on_a[1]) != await owner(on_b)

    a_proc.send_signal(signal.SIGKILL)
    a_proc.wait(10)
    deadline = time.monotonic() + 20
    while not all(c in ended for c in on_a):
        assert time.monotonic() < deadline, f"ended so far: {list(ended)}"
        await asyncio.sleep(0.05)
    for c in on_a:
        assert ended[c].data.reason == events.EndReason.ingress_lost
        assert await owner(c) is None  # the record is gone
    await asyncio.sleep(3.0)  # a few more liveness rounds of the surviving replica
    assert on_b not in ended and await owner(on_b) is not None
    for c in callers:
        await c.close()

