"""The bus's ack policy, dedupe and core subscriptions: the same test bodies on the in-memory bus and on a real
NATS server (``anybus``), plus what only a server does (consumer state, trace propagation, version check)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from voice_runtime import telemetry
from voice_runtime.bus import Bus, Transient, UnsupportedServer, check_server_version
from voice_runtime.handlers import Message, delivery
from voice_runtime.memory import InMemoryBus, subject_matches
from voice_schemas import events, make, streams, subjects

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "nats"])
async def anybus(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Any]:
    if request.param == "memory":
        b: Any = InMemoryBus("test")
        await b.provision()
        yield b
        return
    b = await Bus.connect(nats_url, "test")
    await b.provision()
    yield b
    await b.close()


def _consumer(name: str, **kw: object) -> streams.ConsumerDef:
    """A test-only durable consumer over the dtmf subject (unique name per test)."""
    return dataclasses.replace(
        streams.ConsumerDef("CALLS", name, (events.DtmfReceived.subject_pattern(),)),
        backoff_s=(0.05, 0.05, 0.05), ack_wait_s=5, **kw,
    )


async def _cleanup(bus: Any, name: str) -> None:
    if isinstance(bus, Bus):
        try:
            await bus.js.delete_consumer("CALLS", name)
        except Exception:
            pass


class Inbox:
    """Messages a core subscription received."""

    def __init__(self) -> None:
        self.got: list[Message] = []
        self.event = asyncio.Event()

    async def cb(self, msg: Message) -> None:
        self.got.append(msg)
        self.event.set()

    async def wait(self, n: int, timeout: float = 10.0) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                self.event.clear()
                await self.event.wait()
        return self.got


async def test_same_msg_id_is_handled_once(anybus: Any) -> None:
    name = "test-dedupe-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    seen: list[str] = []

    async def handler(env: Any) -> None:
        if env.call_id == call_id:
            seen.append(env.data.digit)

    c = await anybus.consume(_consumer(name), handler)
    try:
        env = make(events.DtmfReceived(digit="1"), tenant_id="t", call_id=call_id)
        await anybus.publish(env)
        await anybus.publish(env)  # same event id: stored once
        await anybus.publish(make(events.DtmfReceived(digit="2"), tenant_id="t", call_id=call_id))
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert sorted(seen) == ["1", "2"]
    finally:
        await c.stop(1)
        await _cleanup(anybus, name)


async def test_transient_failure_is_redelivered_then_acked(anybus: Any) -> None:
    name = "test-transient-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(env: Any) -> None:
        if env.call_id != call_id:
            return
        seen.append(delivery.get())
        if len(seen) < 3:
            raise Transient("dependency down")
        done.set()

    c = await anybus.consume(_consumer(name, max_deliver=5), handler)
    try:
        await anybus.publish(make(events.DtmfReceived(digit="2"), tenant_id="t", call_id=call_id))
        await asyncio.wait_for(done.wait(), 10)
        assert seen == [1, 2, 3]
        await asyncio.sleep(0.3)
        assert seen == [1, 2, 3], "acked after success: not delivered again"
        if isinstance(anybus, Bus):
            info = await anybus.js.consumer_info("CALLS", name)
            assert info.num_ack_pending == 0 and info.config.max_deliver == 5
    finally:
        await c.stop(1)
        await _cleanup(anybus, name)


async def test_poison_message_is_dead_lettered_once(anybus: Any) -> None:
    name = "test-poison-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    calls = 0
    inbox = Inbox()
    dlq = await anybus.subscribe(subjects.dead_letter("CALLS", name), inbox.cb)

    async def handler(env: Any) -> None:
        nonlocal calls
        if env.call_id == call_id:
            calls += 1
            raise ValueError("cannot ever handle this")

    c = await anybus.consume(_consumer(name, max_deliver=4), handler)
    try:
        # a valid event the handler rejects, and raw garbage that does not parse
        await anybus.publish(make(events.DtmfReceived(digit="3"), tenant_id="t", call_id=call_id))
        await anybus.publish_nowait(subjects.call_subject(call_id, "dtmf"), b"\x00garbage",
                                    {"Nats-Msg-Id": subjects.new_id()})
        got = await inbox.wait(2)
        errors = [m.headers["Voice-Dlq-Error"] for m in got if m.headers]
        assert any("ValueError" in e for e in errors) and any("unparseable" in e for e in errors), errors
        assert all(m.headers and m.headers["Voice-Dlq-Subject"] == subjects.call_subject(call_id, "dtmf")
                   for m in got)
        await asyncio.sleep(1.0)
        assert calls == 1, "a poison message must not be redelivered"
        assert len(inbox.got) == 2
        if isinstance(anybus, Bus):
            info = await anybus.js.consumer_info("CALLS", name)
            assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await dlq.unsubscribe()
        await c.stop(1)
        await _cleanup(anybus, name)


async def test_exhausted_transient_failures_dead_letter(anybus: Any) -> None:
    name = "test-exhaust-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    deliveries = 0
    inbox = Inbox()
    dlq = await anybus.subscribe(subjects.dead_letter("CALLS", name), inbox.cb)

    async def handler(env: Any) -> None:
        nonlocal deliveries
        if env.call_id == call_id:
            deliveries += 1
            raise Transient("still down")

    c = await anybus.consume(_consumer(name, max_deliver=3), handler)
    try:
        await anybus.publish(make(events.DtmfReceived(digit="4"), tenant_id="t", call_id=call_id))
        (m,) = await inbox.wait(1)
        assert m.headers and m.headers["Voice-Dlq-Deliveries"] == "3"
        await asyncio.sleep(0.5)
        assert deliveries == 3
    finally:
        await dlq.unsubscribe()
        await c.stop(1)
        await _cleanup(anybus, name)


async def test_core_subscription_sees_every_message_of_its_pattern(anybus: Any) -> None:
    call_id = subjects.new_call_id()
    inbox = Inbox()
    sub = await anybus.subscribe(events.DtmfReceived.subject_pattern(), inbox.cb)
    other = Inbox()
    sub2 = await anybus.subscribe(events.CallEnded.subject_pattern(), other.cb)
    try:
        await anybus.publish(make(events.DtmfReceived(digit="5"), tenant_id="t", call_id=call_id))
        await anybus.publish_nowait(subjects.audio_in(call_id), b"\x00\x01")
        (m,) = await inbox.wait(1)
        assert m.subject == subjects.call_subject(call_id, "dtmf")
        await asyncio.sleep(0.2)
        assert other.got == [] and len(inbox.got) == 1
    finally:
        await sub.unsubscribe()
        await sub2.unsubscribe()


async def test_last_message_per_subject(anybus: Any) -> None:
    call_id = subjects.new_call_id()
    subject = events.PlayoutStarted.subject_for(call_id)
    assert await anybus.last_message("CALLS", subject) is None
    await anybus.publish(make(events.PlayoutStarted(first_audio_wall_ms=1.0), tenant_id="t", call_id=call_id))
    second = make(events.PlayoutStarted(first_audio_wall_ms=2.0), tenant_id="t", call_id=call_id)
    await anybus.publish(second)
    got = await anybus.last_message("CALLS", subject)
    assert got is not None and got[1] == second.to_bytes()


# ------------------------------------------------------------------ only a real server
async def test_trace_context_survives_a_hop(bus: Bus) -> None:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing("test", None, SimpleSpanProcessor(exporter))
    tracer = trace.get_tracer("test")
    name = "test-trace-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    inner: list[trace.SpanContext] = []
    done = asyncio.Event()

    async def handler(env: Any) -> None:
        if env.call_id == call_id:
            inner.append(trace.get_current_span().get_span_context())
            done.set()

    c = await bus.consume(_consumer(name), handler)
    try:
        with tracer.start_as_current_span("producer") as span:
            await bus.publish(make(events.DtmfReceived(digit="5"), tenant_id="t", call_id=call_id))
            producer = span.get_span_context()
        await asyncio.wait_for(done.wait(), 5)
        assert inner[0].trace_id == producer.trace_id
        names = {s.name for s in exporter.get_finished_spans() if s.context.trace_id == producer.trace_id}
        assert "call.*.dtmf process" in names, names
    finally:
        await c.stop(1)
        await _cleanup(bus, name)


async def test_provisioning_is_idempotent(bus: Bus) -> None:
    await bus.provision()
    kvs = await bus.provision()
    info = await bus.js.stream_info("CALLS")
    assert info.config.duplicate_window == streams.CALLS.duplicate_window_s
    assert set(kvs) == {b.bucket for b in streams.KV_BUCKETS}
    status = await kvs["agents"].status()
    assert status.bucket == "agents"


async def test_a_consumer_receives_only_its_subjects(bus: Bus) -> None:
    """Multi-subject filters hold on the server we run against (2.9 ignored them: every consumer got all)."""
    name = "test-filter-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    got: list[str] = []
    d = dataclasses.replace(_consumer(name), filter_subjects=(events.DtmfReceived.subject_pattern(),
                                                              events.CallAnswered.subject_pattern()))

    async def handler(env: Any) -> None:
        if env.call_id == call_id:
            got.append(env.type)

    c = await bus.consume(d, handler)
    try:
        for data in (events.CallEnded(reason=events.EndReason.caller_hangup), events.DtmfReceived(digit="7"),
                     events.PlayoutStarted(first_audio_wall_ms=1.0), events.CallAnswered(stream_id="s")):
            await bus.publish(make(data, tenant_id="t", call_id=call_id))
        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert sorted(got) == sorted([events.DtmfReceived.TYPE, events.CallAnswered.TYPE])
        info = await bus.js.consumer_info("CALLS", name)
        assert sorted(info.config.filter_subjects or []) == sorted(d.filter_subjects)
    finally:
        await c.stop(1)
        await _cleanup(bus, name)


@pytest.mark.unit
def test_old_servers_are_refused_with_a_clear_message() -> None:
    for ok in ("2.10.0", "2.12.3", "3.0.0-beta"):
        check_server_version(ok)
    with pytest.raises(UnsupportedServer, match=r"2\.9\.10 is too old"):
        check_server_version("2.9.10")


@pytest.mark.unit
def test_subject_matching_follows_nats_wildcards() -> None:
    assert subject_matches("call.*.dtmf", "call.abc.dtmf")
    assert not subject_matches("call.*.dtmf", "call.abc.dtmf.x")
    assert subject_matches("call.*.control.>", "call.abc.control.barge_in")
    assert not subject_matches("call.*.control.>", "call.abc.control")
    assert subject_matches("dlq.>", "dlq.CALLS.x")
