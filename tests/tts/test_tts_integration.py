"""tts with the real piper voice and a real NATS: reply chunks in, 20 ms frames on audio.out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from voice_devstack.speech import word_error_rate
from voice_runtime.bus import Bus
from voice_schemas import make, subjects
from voice_schemas.audio import FRAME_BYTES, AudioFrame
from voice_schemas.events import BargeIn, CallEnded, EndReason, ReplyChunk
from voice_stt.engines.whisper import WhisperSettings, WhisperSpeechToText
from voice_tts.service import TtsService
from voice_tts.settings import TtsSettings

pytestmark = pytest.mark.integration

GREETING = "Hello, how can I help you today?"
LONG = " ".join(f"This is sentence number {i} of a very long answer that nobody wants to hear." for i in range(20))


@pytest.fixture(scope="module")
async def tts_service(nats_url: str) -> AsyncIterator[TtsService]:
    svc = TtsService(TtsSettings(nats_url=nats_url, shutdown_grace_s=2.0))
    await svc.start()
    assert await svc.check_ready()
    yield svc
    await svc.stop()


class Frames:
    """Collects agent audio frames of one call from a core subscription."""

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.arrived: list[float] = []
        self._changed = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        self.frames.extend(AudioFrame.from_message(msg.data, msg.headers).split())  # several a message
        self.arrived.append(time.perf_counter())
        self._changed.set()

    async def wait(self, done: Callable[[list[AudioFrame]], bool], timeout: float = 20.0) -> list[AudioFrame]:
        async with asyncio.timeout(timeout):
            while not done(self.frames):
                self._changed.clear()
                await self._changed.wait()
        return self.frames


async def listen(bus: Bus, call_id: str) -> Frames:
    sink = Frames()
    await bus.nc.subscribe(subjects.audio_out(call_id), cb=sink.on_msg)
    return sink


def reply(call_id: str, text: str, *, index: int = 0, final: bool = True, epoch: int = 0,
          voice: str | None = None) -> Any:
    return make(ReplyChunk(index=index, text=text, final=final, voice=voice), tenant_id="tenant-a",
                call_id=call_id, turn_id="turn-1", epoch=epoch, seq=index)


def has_final(frames: list[AudioFrame]) -> bool:
    return any(f.final for f in frames)


async def test_reply_chunk_becomes_tagged_frames_that_say_the_text(tts_service: TtsService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    sink = await listen(bus, call_id)
    sent = time.perf_counter()
    await bus.publish(reply(call_id, GREETING, epoch=1))
    frames = await sink.wait(has_final)
    assert all(len(f.pcm) == FRAME_BYTES for f in frames)
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})  # strictly increasing
    assert {(f.turn_id, f.epoch, f.chunk) for f in frames} == {("turn-1", 1, 0)}
    assert [f.last_in_chunk for f in frames] == [False] * (len(frames) - 1) + [True]
    assert [f.final for f in frames] == [False] * (len(frames) - 1) + [True]
    assert 1.0 < len(frames) * 0.02 < 4.0
    assert sink.arrived[0] - sent < 5.0
    stt = WhisperSpeechToText(WhisperSettings(stt_model="tiny.en", stt_cpu_threads=2))
    await stt.start()
    text = (await stt.transcribe(b"".join(f.pcm for f in frames), 16_000, "en")).text
    stt.close()
    assert word_error_rate(GREETING, text) <= 0.15, text


async def test_chunks_of_a_reply_arrive_in_order_with_their_flags(tts_service: TtsService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    sink = await listen(bus, call_id)
    await bus.publish(reply(call_id, "Sure.", index=0, final=False))
    await bus.publish(reply(call_id, "Your table is booked for seven.", index=1, final=True, voice="no-such-voice"))
    frames = await sink.wait(has_final)
    chunks = [f.chunk for f in frames if f.chunk is not None]
    assert len(chunks) == len(frames)
    assert chunks == sorted(chunks) and set(chunks) == {0, 1}
    ends = [(f.chunk, f.last_in_chunk, f.final) for f in frames if f.last_in_chunk or f.final]
    assert ends == [(0, True, False), (1, True, True)]
    # the reply's first frame says how long tts took to it (ingress hands it on); no other frame does
    timed = [(f.chunk, f.frame) for f in frames if f.synth_ms is not None]
    assert timed == [(0, 0)] and 0.0 < frames[0].synth_ms < 20_000.0
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})


async def test_empty_chunk_still_sends_a_closing_frame(tts_service: TtsService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    sink = await listen(bus, call_id)
    await bus.publish(reply(call_id, "", index=2, final=True))
    frames = await sink.wait(has_final)
    assert len(frames) == 1
    assert frames[0].pcm == bytes(FRAME_BYTES) and frames[0].last_in_chunk and frames[0].chunk == 2


async def test_barge_in_stops_a_long_chunk_and_skips_stale_ones(tts_service: TtsService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    sink = await listen(bus, call_id)
    await bus.publish(reply(call_id, LONG, index=0, final=True, epoch=0))
    await sink.wait(lambda fs: len(fs) > 0)
    await bus.publish(make(BargeIn(at_ms=1234, speech_ms=400), tenant_id="tenant-a", call_id=call_id, epoch=1))
    # a chunk of the old epoch that was still in the stream, then the reply of the new epoch
    await bus.publish(reply(call_id, "Stale sentence.", index=1, final=True, epoch=0))
    await bus.publish(reply(call_id, "Okay, go ahead.", index=0, final=True, epoch=1))
    frames = await sink.wait(has_final)
    old = [f for f in frames if f.epoch == 0]
    new = [f for f in frames if f.epoch == 1]
    # 20 sentences are ~60 s of audio (3000 frames): only the first sentence or two went out
    assert 0 < len(old) < 600, len(old)
    assert not any(f.last_in_chunk or f.final for f in old)
    assert all(f.chunk == 0 for f in old)  # the stale chunk 1 was never spoken
    assert new and new[-1].final and frames[-1] is new[-1]
    assert tts_service.calls.get(call_id) is not None and tts_service.calls.get(call_id).epoch == 1  # type: ignore[union-attr]


async def test_call_end_frees_state_and_late_chunks_are_dropped(tts_service: TtsService, bus: Bus) -> None:
    ended, other = subjects.new_call_id(), subjects.new_call_id()
    sink = await listen(bus, ended)
    await bus.publish(reply(ended, "First.", final=True))
    await sink.wait(has_final)
    assert ended in tts_service.calls
    await bus.publish(make(CallEnded(reason=EndReason.caller_hangup), tenant_id="tenant-a", call_id=ended))
    for _ in range(500):
        if ended not in tts_service.calls:
            break
        await asyncio.sleep(0.01)
    assert tts_service.calls.is_ended(ended)
    count = len(sink.frames)
    other_sink = await listen(bus, other)
    await bus.publish(reply(ended, "Too late.", index=1, final=True))
    await bus.publish(reply(other, "Still here.", final=True))
    await other_sink.wait(has_final)
    await asyncio.sleep(0.1)
    assert len(sink.frames) == count and ended not in tts_service.calls
