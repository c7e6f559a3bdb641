"""The bus's paced writes (``voice_runtime.bus.PacedClient``) against a real NATS server: a busy publisher's
messages share writes, nothing is lost or reordered, and an idle one's message is not held back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from voice_runtime.bus import Bus
from voice_runtime.handlers import Message
from voice_runtime.settings import CommonSettings
from voice_schemas import subjects

pytestmark = pytest.mark.integration

N = 200


def count_writes(bus: Bus) -> Callable[[], int]:
    """Counts the writes the connection makes to its socket from now on."""
    transport: Any = bus.nc._transport
    writes = [0]
    original = transport.writelines

    def counting(payload: Any) -> Any:
        writes[0] += 1
        return original(payload)

    transport.writelines = counting
    return lambda: writes[0]


async def publish_from_tasks(bus: Bus, subject: str) -> None:
    """N messages, each from its own task in its own loop pass (as ingress's calls publish caller audio)."""

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.0005)
        await bus.publish_nowait(subject, str(i).encode())

    await asyncio.gather(*(one(i) for i in range(N)))
    await bus.nc.flush()


@pytest.fixture
async def receiver(nats_url: str) -> AsyncIterator[tuple[Bus, str, list[bytes]]]:
    bus = await Bus.connect(nats_url, "test-receiver")
    subject = f"test.pacing.{subjects.new_id()[:8]}"
    got: list[bytes] = []

    async def on(msg: Message) -> None:
        got.append(msg.data)

    await bus.subscribe(subject, on)
    await bus.nc.flush()
    yield bus, subject, got
    await bus.close()


async def delivered(got: list[bytes], n: int) -> list[bytes]:
    for _ in range(200):
        if len(got) >= n:
            break
        await asyncio.sleep(0.01)
    return got


async def test_a_busy_publisher_shares_writes_and_loses_nothing(nats_url: str,
                                                                receiver: tuple[Bus, str, list[bytes]]) -> None:
    _, subject, got = receiver
    gap_s = 0.01
    unpaced = await Bus.connect(nats_url, "test-unpaced", write_gap_s=0.0)
    paced = await Bus.connect(nats_url, "test-paced", write_gap_s=gap_s)
    try:
        writes = count_writes(unpaced)
        await publish_from_tasks(unpaced, subject)
        unpaced_writes = writes()
        writes = count_writes(paced)
        started = time.monotonic()
        await publish_from_tasks(paced, subject)
        took_s = time.monotonic() - started
        paced_writes = writes()
    finally:
        await unpaced.close()
        await paced.close()
    assert [int(b) for b in await delivered(got, 2 * N)] == list(range(N)) * 2  # all of them, in order
    # the pacer's promise: at most one write per gap (however slow the machine made the publishing), so the
    # 200 messages, published over at least 100 ms, shared a dozen or so writes where nats-py's pace made one
    # per loop pass that had a message
    assert paced_writes <= took_s / gap_s + 2, (paced_writes, took_s)
    assert paced_writes < unpaced_writes, (paced_writes, unpaced_writes)


async def test_an_idle_publisher_writes_at_once(nats_url: str, receiver: tuple[Bus, str, list[bytes]]) -> None:
    _, subject, got = receiver
    paced = await Bus.connect(nats_url, "test-paced", write_gap_s=60.0)  # held for the gap, it would never come
    try:
        await paced.publish_nowait(subject, b"0")
        assert await delivered(got, 1) == [b"0"], "the first write after a quiet spell was held for the gap"
    finally:
        await paced.close()


def test_services_pace_their_writes_by_default() -> None:
    assert CommonSettings().bus_write_gap_ms > 0
