"""The consumer's pull loop hands each message on as it arrives. A JetStream pull for a batch returns when the
batch is full or its wait ends, so one that asks for several messages can hold those it has meanwhile. Measured
through DurableConsumer on the embedded nats-server 2.15.1 (2026-12-03): 40 messages sent in pairs 15 ms apart,
0.5-2.5 s between pairs (a call's CallStarted and CallAnswered are such a pair): pulling 16 at a time with the 1 s
wait, p50 1.9 ms, p90 281 ms, max 802 ms from publish to handler (the greetings of 250-970 ms in that morning's
peer bench); pulling one at a time, p50 1.5 ms, max 2.7 ms. The fake subscription here follows the batch-or-wait
rule, with a 30 s wait, so a held message fails the test by far."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from voice_runtime.bus import DurableConsumer
from voice_schemas import events, make, streams, subjects

pytestmark = pytest.mark.unit

D = dataclasses.replace(streams.ConsumerDef("CALLS", "unit-pull", (events.DtmfReceived.subject_pattern(),)),
                        concurrency=16)


class FakeMsg:
    def __init__(self, data: bytes) -> None:
        self.subject, self.data, self.headers = "call.c1.dtmf", data, {}
        self.metadata = SimpleNamespace(num_delivered=1, sequence=SimpleNamespace(stream=1))

    async def ack(self) -> None:
        pass


class BatchOrWaitSub:
    """A pull subscription that answers a fetch when ``batch`` messages have come or ``timeout`` has passed."""

    def __init__(self) -> None:
        self.queue: list[FakeMsg] = []
        self.arrived = asyncio.Condition()
        self.batches: list[int] = []

    async def put(self, msg: FakeMsg) -> None:
        async with self.arrived:
            self.queue.append(msg)
            self.arrived.notify_all()

    async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
        self.batches.append(batch)
        async with self.arrived:
            try:
                await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.queue) >= batch), timeout)
            except TimeoutError:
                if not self.queue:
                    raise
            out, self.queue[:] = self.queue[:batch], self.queue[batch:]
            return out

    async def unsubscribe(self) -> None:
        pass


async def test_a_lone_message_is_handled_while_the_pull_could_wait_for_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DurableConsumer, "FETCH_WAIT_S", 30.0)  # a held message would wait 30 s
    sub = BatchOrWaitSub()

    async def bind(**_: Any) -> BatchOrWaitSub:
        return sub

    handled: list[str] = []
    done = asyncio.Event()

    async def handler(env: Any) -> None:
        handled.append(env.data.digit)
        if len(handled) == 3:
            done.set()

    bus = SimpleNamespace(service="unit", js=SimpleNamespace(pull_subscribe_bind=bind))
    c = DurableConsumer(bus, D, handler)  # type: ignore[arg-type]
    c.start()
    try:
        for digit in "123":  # one at a time, as a call's events come, never a full batch
            await sub.put(FakeMsg(make(events.DtmfReceived(digit=digit), tenant_id="t",
                                       call_id=subjects.new_call_id()).to_bytes()))
            await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            await done.wait()
        assert sorted(handled) == ["1", "2", "3"]
    finally:
        await c.stop(1)
