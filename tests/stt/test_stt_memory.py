"""The stt stage on the in-memory bus with a fake recognizer: the service as it runs, no broker, no model."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_runtime.memory import InMemoryBus
from voice_schemas import Envelope, make, subjects
from voice_schemas.events import CallEnded, EndReason, TranscriptFinalized, UtteranceCaptured
from voice_stt.service import SttService, transcript_event_id
from voice_stt.settings import SttSettings

from .fakes import FakeSTT

pytestmark = pytest.mark.unit


def utterance(call_id: str, utterance_id: str = "u1", audio: bytes = b"\x01\x00" * 1600) -> Envelope[Any]:
    u = UtteranceCaptured(utterance_id=utterance_id, start_ms=1000, end_ms=2500, sample_rate=8000,
                          audio_b64=base64.b64encode(audio).decode(), end_of_turn_ms=210.0, speech_end_wall_ms=1.7e12)
    return make(u, tenant_id="t1", call_id=call_id, turn_id=f"turn-{utterance_id}", epoch=3, seq=7)


async def running(stt: FakeSTT, **settings: Any) -> tuple[SttService, InMemoryBus]:
    bus = InMemoryBus("stt")
    svc = SttService(SttSettings(shutdown_grace_s=1.0, **settings), stt=stt)
    await svc.start(bus=bus)
    return svc, bus


@pytest.fixture
async def stage() -> AsyncIterator[tuple[SttService, InMemoryBus, FakeSTT]]:
    stt = FakeSTT("I need a table")
    svc, bus = await running(stt, stt_language="en")
    yield svc, bus, stt
    await svc.stop()
    stt.close()


def transcripts(bus: InMemoryBus) -> list[Envelope[Any]]:
    return bus.events(TranscriptFinalized)


async def test_an_utterance_on_the_bus_becomes_one_transcript(stage: tuple[SttService, InMemoryBus, FakeSTT]) -> None:
    svc, bus, stt = stage
    assert await svc.check_ready()
    call_id = subjects.new_call_id()
    env = utterance(call_id)
    await bus.publish(env)
    await bus.wait_for(lambda: transcripts(bus))
    (out,) = transcripts(bus)
    assert out.id == transcript_event_id(env.id) and out.subject == TranscriptFinalized.subject_for(call_id)
    assert (out.tenant_id, out.turn_id, out.epoch, out.seq) == ("t1", "turn-u1", 3, 7)
    assert out.data.text == "I need a table" and out.data.utterance_id == "u1"
    assert stt.calls == [(3200, 8000, "en")]


async def test_utterances_of_an_ended_call_are_dropped(stage: tuple[SttService, InMemoryBus, FakeSTT]) -> None:
    svc, bus, stt = stage
    ended, live = subjects.new_call_id(), subjects.new_call_id()
    await bus.publish(make(CallEnded(reason=EndReason.caller_hangup), tenant_id="t1", call_id=ended))
    await bus.wait_for(lambda: ended in svc.ended)
    await bus.publish(utterance(ended))
    await bus.publish(utterance(live))
    await bus.wait_for(lambda: transcripts(bus))
    await bus.settle()
    assert [e.call_id for e in transcripts(bus)] == [live] and len(stt.calls) == 1


async def test_bad_audio_is_dead_lettered(stage: tuple[SttService, InMemoryBus, FakeSTT]) -> None:
    _, bus, stt = stage
    env = utterance(subjects.new_call_id())
    env.data.audio_b64 = "not base64!!"
    await bus.publish(env)
    await bus.settle()
    assert len(bus.dead_letters) == 1 and transcripts(bus) == [] and stt.calls == []


async def test_a_replica_transcribes_at_most_stt_concurrency_utterances_at_once() -> None:
    gate = threading.Event()
    stt = FakeSTT(workers=2, gate=gate)
    svc, bus = await running(stt, stt_concurrency=2)
    try:
        assert svc.consumer_for(SttService.utterances).concurrency == 2
        call_id = subjects.new_call_id()
        for i in range(5):
            await bus.publish(utterance(call_id, utterance_id=f"u{i}"))
        await bus.wait_for(lambda: stt.running == 2)
        await asyncio.sleep(0.05)
        assert stt.running == 2  # the other three wait in the stream, where another replica could take them
        gate.set()
        await bus.wait_for(lambda: len(transcripts(bus)) == 5)
        assert stt.most_at_once == 2
    finally:
        gate.set()
        await svc.stop()
        stt.close()
