"""The tts stage on the in-memory bus with a fake engine: reply chunks in, tagged frames out, barge-in and call
end as the running service handles them, no broker and no model."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_runtime.engines import UnknownEngine
from voice_runtime.memory import InMemoryBus
from voice_schemas import make, subjects
from voice_schemas.audio import AudioFrame
from voice_schemas.events import BargeIn, CallEnded, EndReason, ReplyChunk
from voice_tts.engines import ENGINES
from voice_tts.engines.piper import PiperTextToSpeech
from voice_tts.service import TtsService
from voice_tts.settings import TtsSettings

from .fakes import FakeEngine, FakeTTS, tone

pytestmark = pytest.mark.unit


class Stage:
    def __init__(self, svc: TtsService, bus: InMemoryBus, voice: FakeTTS) -> None:
        self.svc, self.bus, self.voice = svc, bus, voice

    async def listen(self, call_id: str) -> list[AudioFrame]:
        frames: list[AudioFrame] = []

        async def on_frame(msg: Any) -> None:
            frames.extend(AudioFrame.from_message(msg.data, msg.headers).split())  # several a message

        await self.bus.subscribe(subjects.audio_out(call_id), on_frame)
        return frames

    async def reply(self, call_id: str, text: str, *, index: int = 0, final: bool = True, epoch: int = 0) -> None:
        await self.bus.publish(make(ReplyChunk(index=index, text=text, final=final), tenant_id="t1",
                                    call_id=call_id, turn_id="turn-1", epoch=epoch, seq=index))


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    voice = FakeTTS([tone(0.1, 16_000) for _ in range(3)])  # 3 sentences of 5 frames each
    bus, engine = InMemoryBus("tts"), FakeEngine(voice)
    svc = TtsService(TtsSettings(shutdown_grace_s=1.0), engine=engine)
    await svc.start(bus=bus)
    voice.texts.clear()
    yield Stage(svc, bus, voice)
    if voice.gate is not None:
        voice.gate.set()
    await svc.stop()
    engine.close()


async def test_a_reply_chunk_becomes_tagged_frames_first_clause_first(stage: Stage) -> None:
    assert await stage.svc.check_ready()
    call_id = subjects.new_call_id()
    frames = await stage.listen(call_id)
    await stage.reply(call_id, "Sure, I can book a table for two.", epoch=2)
    await stage.bus.wait_for(lambda: any(f.final for f in frames))
    assert stage.voice.texts == ["Sure,", "I can book a table for two."]
    assert len(frames) == 30 and [f.seq for f in frames] == list(range(1, 31))
    assert {(f.turn_id, f.epoch, f.chunk) for f in frames} == {("turn-1", 2, 0)}
    assert [f.last_in_chunk for f in frames] == [False] * 29 + [True]


async def test_barge_in_stops_the_chunk_being_spoken_and_skips_stale_ones(stage: Stage) -> None:
    call_id = subjects.new_call_id()
    frames = await stage.listen(call_id)
    stage.voice.gate = threading.Event()  # the second sentence waits until the barge-in is in
    await stage.reply(call_id, "A long answer nobody wants to hear.", epoch=0)
    await stage.bus.wait_for(lambda: len(frames) >= 4)
    await stage.bus.publish(make(BargeIn(at_ms=1000, speech_ms=400), tenant_id="t1", call_id=call_id, epoch=1))
    await stage.bus.wait_for(lambda: (c := stage.svc.calls.get(call_id)) is not None and c.epoch == 1)
    stage.voice.gate.set()
    await stage.reply(call_id, "Stale.", index=1, epoch=0)
    await stage.reply(call_id, "Okay.", index=0, epoch=1)
    await stage.bus.wait_for(lambda: any(f.final for f in frames))
    old = [f for f in frames if f.epoch == 0]
    assert 0 < len(old) < 15 and not any(f.last_in_chunk for f in old)
    assert all(f.chunk == 0 for f in old)  # the stale chunk was never spoken
    assert frames[-1].epoch == 1 and frames[-1].final
    assert "Stale." not in stage.voice.texts


async def test_late_chunks_of_an_ended_call_are_dropped(stage: Stage) -> None:
    ended = subjects.new_call_id()
    frames = await stage.listen(ended)
    await stage.bus.publish(make(CallEnded(reason=EndReason.caller_hangup), tenant_id="t1", call_id=ended))
    await stage.bus.wait_for(lambda: stage.svc.calls.is_ended(ended))
    await stage.reply(ended, "Too late.")
    await stage.bus.settle()
    assert frames == [] and stage.voice.texts == []


def test_piper_is_the_default_engine_and_unknown_ones_are_refused() -> None:
    engine = ENGINES.get(TtsSettings().tts_engine)(TtsSettings(tts_voice="en_US-joe-medium", tts_concurrency=2))
    assert isinstance(engine, PiperTextToSpeech)
    assert engine.voices.default == "joe" and engine.workers == 2 and not engine.loaded
    engine.close()
    with pytest.raises(UnknownEngine, match="piper"):
        TtsService(TtsSettings(tts_engine="no-such-engine"))
