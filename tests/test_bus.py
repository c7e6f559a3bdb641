"""Bus runtime against a real NATS server: dedupe, ack policy, dead letters, trace propagation."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from voice_runtime import telemetry
from voice_runtime.bus import Bus, Transient
from voice_schemas import events, make, streams, subjects

pytestmark = pytest.mark.integration


def _consumer(name: str, **kw: object) -> streams.ConsumerDef:
    """A test-only durable consumer over the dtmf subject (unique name per test)."""
    return dataclasses.replace(
        streams.ConsumerDef("CALLS", name, (events.DtmfReceived.subject_pattern(),)),
        backoff_s=(0.05, 0.05, 0.05), ack_wait_s=5, **kw,
    )


async def _cleanup(bus: Bus, name: str) -> None:
    try:
        await bus.js.delete_consumer("CALLS", name)
    except Exception:
        pass


async def test_same_msg_id_is_stored_once(bus: Bus) -> None:
    call_id = subjects.new_call_id()
    env = make(events.DtmfReceived(digit="1"), tenant_id="t", call_id=call_id)
    a1 = await bus.publish(env)
    a2 = await bus.publish(env)
    assert not a1.duplicate and a2.duplicate and a1.seq == a2.seq
    other = make(events.DtmfReceived(digit="1"), tenant_id="t", call_id=call_id)
    a3 = await bus.publish(other)
    assert a3.seq != a1.seq


async def test_transient_failure_is_redelivered_then_acked(bus: Bus) -> None:
    name = "test-transient-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(env, msg):  # type: ignore[no-untyped-def]
        if env.call_id != call_id:
            return
        seen.append(msg.metadata.num_delivered)
        if len(seen) < 3:
            raise Transient("dependency down")
        done.set()

    c = await bus.consume(_consumer(name, max_deliver=5), handler)
    try:
        await bus.publish(make(events.DtmfReceived(digit="2"), tenant_id="t", call_id=call_id))
        await asyncio.wait_for(done.wait(), 10)
        assert seen == [1, 2, 3]
        await asyncio.sleep(0.3)
        info = await bus.js.consumer_info("CALLS", name)
        assert info.num_ack_pending == 0 and info.config.max_deliver == 5
    finally:
        await c.stop(1)
        await _cleanup(bus, name)


async def test_poison_message_is_dead_lettered_once(bus: Bus) -> None:
    name = "test-poison-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    calls = 0
    dlq_subject = subjects.dead_letter("CALLS", name)
    dlq = await bus.nc.subscribe(dlq_subject)

    async def handler(env, msg):  # type: ignore[no-untyped-def]
        nonlocal calls
        if env.call_id == call_id:
            calls += 1
            raise ValueError("cannot ever handle this")

    c = await bus.consume(_consumer(name, max_deliver=4), handler)
    try:
        # a valid event the handler rejects, and raw garbage that does not parse
        await bus.publish(make(events.DtmfReceived(digit="3"), tenant_id="t", call_id=call_id))
        await bus.js.publish(subjects.call_subject(call_id, "dtmf"), b"\x00garbage")
        got = [await dlq.next_msg(timeout=5), await dlq.next_msg(timeout=5)]
        errors = sorted(m.headers["Voice-Dlq-Error"][:11] for m in got)
        assert any("ValueError" in e for e in errors)
        assert any(m.headers["Voice-Dlq-Subject"] == subjects.call_subject(call_id, "dtmf") for m in got)
        await asyncio.sleep(1.0)
        assert calls == 1, "a poison message must not be redelivered"
        info = await bus.js.consumer_info("CALLS", name)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
    finally:
        await dlq.unsubscribe()
        await c.stop(1)
        await _cleanup(bus, name)


async def test_exhausted_transient_failures_dead_letter(bus: Bus) -> None:
    name = "test-exhaust-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    deliveries = 0
    dlq = await bus.nc.subscribe(subjects.dead_letter("CALLS", name))

    async def handler(env, msg):  # type: ignore[no-untyped-def]
        nonlocal deliveries
        if env.call_id == call_id:
            deliveries += 1
            raise Transient("still down")

    c = await bus.consume(_consumer(name, max_deliver=3), handler)
    try:
        await bus.publish(make(events.DtmfReceived(digit="4"), tenant_id="t", call_id=call_id))
        m = await dlq.next_msg(timeout=10)
        assert m.headers["Voice-Dlq-Deliveries"] == "3"
        await asyncio.sleep(0.5)
        assert deliveries == 3
    finally:
        await dlq.unsubscribe()
        await c.stop(1)
        await _cleanup(bus, name)


async def test_trace_context_survives_a_hop(bus: Bus) -> None:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing("test", None, SimpleSpanProcessor(exporter))
    tracer = trace.get_tracer("test")
    name = "test-trace-" + subjects.new_id()[:8]
    call_id = subjects.new_call_id()
    inner: list[trace.SpanContext] = []
    done = asyncio.Event()

    async def handler(env, msg):  # type: ignore[no-untyped-def]
        if env.call_id == call_id:
            assert "traceparent" in msg.headers
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
    await bus.provision()
    info = await bus.js.stream_info("CALLS")
    assert info.config.duplicate_window == streams.CALLS.duplicate_window_s
    kv = await bus.js.key_value("agents")
    assert kv is not None
