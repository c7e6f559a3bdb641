"""The NATS consumer's edge cases, with a fake message and JetStream: a handled message whose ack fails is never
dead-lettered; a dead letter that cannot be written is never silently lost."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs
from voice_runtime.bus import DurableConsumer
from voice_schemas import events, make, streams, subjects

pytestmark = pytest.mark.unit

D = dataclasses.replace(streams.ConsumerDef("CALLS", "unit-ack", (events.DtmfReceived.subject_pattern(),)),
                        max_deliver=3)


class FakeMsg:
    def __init__(self, data: bytes, delivered: int, *, ack_fails: bool = False) -> None:
        self.subject, self.data, self.headers = "call.c1.dtmf", data, {"Nats-Msg-Id": "x"}
        self.metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=42))
        self.ack_fails = ack_fails
        self.calls: list[tuple[str, Any]] = []

    async def ack(self) -> None:
        self.calls.append(("ack", None))
        if self.ack_fails:
            raise ConnectionError("connection closed")

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(("nak", delay))

    async def term(self) -> None:
        self.calls.append(("term", None))


class FakeJs:
    def __init__(self, failures: int) -> None:
        self.failures, self.published = failures, []  # type: ignore[var-annotated]

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("nats: timeout")
        self.published.append((subject, headers))


def _consumer(js: FakeJs, handler: Any) -> DurableConsumer:
    c = DurableConsumer(SimpleNamespace(service="unit", js=js), D, handler)  # type: ignore[arg-type]
    c.DLQ_ATTEMPTS = (0.0, 0.0, 0.0)
    return c


def _data() -> bytes:
    return make(events.DtmfReceived(digit="1"), tenant_id="t", call_id=subjects.new_call_id()).to_bytes()


async def test_a_handled_message_whose_ack_fails_is_not_dead_lettered() -> None:
    handled: list[str] = []

    async def ok(env: Any) -> None:
        handled.append(env.data.digit)

    js = FakeJs(failures=0)
    msg = FakeMsg(_data(), delivered=3, ack_fails=True)  # the last allowed delivery
    c = _consumer(js, ok)
    await c._sem.acquire()
    await c._handle(msg)  # type: ignore[arg-type]
    assert handled == ["1"]
    assert js.published == [] and [k for k, _ in msg.calls] == ["ack"]


async def test_a_dead_letter_that_cannot_be_written_is_naked_while_deliveries_remain() -> None:
    async def poison(env: Any) -> None:
        raise ValueError("never")

    js = FakeJs(failures=99)
    msg = FakeMsg(_data(), delivered=1)
    c = _consumer(js, poison)
    await c._sem.acquire()
    await c._handle(msg)  # type: ignore[arg-type]
    assert msg.calls == [("nak", 1.0)], "not terminated: it comes back and the dead letter is tried again"


async def test_a_dead_letter_lost_on_the_last_delivery_is_logged_with_its_stream_sequence() -> None:
    async def poison(env: Any) -> None:
        raise ValueError("never")

    js = FakeJs(failures=99)
    msg = FakeMsg(_data(), delivered=3)
    c = _consumer(js, poison)
    await c._sem.acquire()
    with capture_logs() as logs:
        await c._handle(msg)  # type: ignore[arg-type]
    assert ("term", None) not in msg.calls
    lost = [entry for entry in logs if entry["event"] == "dead_letter_lost"]
    assert lost and lost[0]["stream_seq"] == 42 and lost[0]["stream"] == "CALLS"


async def test_a_dead_letter_is_retried_before_giving_up() -> None:
    async def poison(env: Any) -> None:
        raise ValueError("never")

    js = FakeJs(failures=2)
    msg = FakeMsg(_data(), delivered=3)
    c = _consumer(js, poison)
    await c._sem.acquire()
    await c._handle(msg)  # type: ignore[arg-type]
    assert len(js.published) == 1 and msg.calls == [("term", None)]
    await asyncio.sleep(0)
