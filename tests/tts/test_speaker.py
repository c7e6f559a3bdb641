"""Speaking a reply chunk: frame tagging, end-of-chunk flags, epoch cancellation, failure fallback."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from voice_schemas.audio import FRAME_BYTES, AudioFrame
from voice_tts.calls import CallAudio, CallAudioRegistry
from voice_tts.speaker import ChunkJob, speak_chunk, split_first_clause
from voice_tts.voices import UnknownVoice, Voices, VoiceSpec

from .fakes import FakeEngine, FakeTTS, Recorder, run_inline, tone

pytestmark = pytest.mark.unit


def job(text: str = "Hello there.", *, epoch: int = 0, index: int = 0, final: bool = True) -> ChunkJob:
    return ChunkJob(turn_id="t1", epoch=epoch, index=index, text=text, final=final)


async def test_frames_are_tagged_and_only_the_last_is_flagged() -> None:
    tts = FakeTTS([tone(0.1, 16_000), tone(0.05, 16_000)])
    call, rec = CallAudio(epoch=2), Recorder()
    result = await speak_chunk(job(epoch=2, index=3), tts, call, rec, run_inline)
    frames = rec.frames
    assert len(frames) == 8 and result.frames == 8 and not result.cancelled
    assert all(len(f.pcm) == FRAME_BYTES for f in frames)
    assert [f.seq for f in frames] == list(range(1, 9))
    assert {(f.turn_id, f.epoch, f.chunk) for f in frames} == {("t1", 2, 3)}
    assert [f.last_in_chunk for f in frames] == [False] * 7 + [True]
    assert [f.final for f in frames] == [False] * 7 + [True]
    assert result.first_audio_s is not None


async def test_a_chunk_that_is_not_the_reply_end_is_not_final() -> None:
    call, rec = CallAudio(), Recorder()
    await speak_chunk(job(final=False), FakeTTS([tone(0.04, 16_000)]), call, rec, run_inline)
    assert rec.frames[-1].last_in_chunk and not rec.frames[-1].final


async def test_seq_keeps_growing_across_chunks_of_a_call() -> None:
    call, rec = CallAudio(), Recorder()
    await speak_chunk(job(index=0, final=False), FakeTTS([tone(0.04, 16_000)]), call, rec, run_inline)
    await speak_chunk(job(index=1), FakeTTS([tone(0.04, 16_000)]), call, rec, run_inline)
    assert [f.seq for f in rec.frames] == [1, 2, 3, 4]
    assert [f.chunk for f in rec.frames] == [0, 0, 1, 1]


@pytest.mark.parametrize("text", ["", "   "])
async def test_empty_text_sends_one_silent_closing_frame(text: str) -> None:
    tts = FakeTTS([tone(1.0, 16_000)])
    call, rec = CallAudio(), Recorder()
    await speak_chunk(job(text), tts, call, rec, run_inline)
    assert tts.produced == 0
    assert len(rec.frames) == 1
    f = rec.frames[0]
    assert f.pcm == bytes(FRAME_BYTES) and f.last_in_chunk and f.final


async def test_synthesis_failure_still_closes_the_chunk() -> None:
    tts = FakeTTS([tone(0.1, 16_000), tone(0.1, 16_000)], fail_at=1)
    call, rec = CallAudio(), Recorder()
    result = await speak_chunk(job(), tts, call, rec, run_inline)
    assert result.failed and not result.cancelled
    assert len(rec.frames) == 5
    assert rec.frames[-1].last_in_chunk and rec.frames[-1].final
    assert not any(f.last_in_chunk for f in rec.frames[:-1])


async def test_failure_before_any_audio_sends_a_silent_closing_frame() -> None:
    tts = FakeTTS([tone(0.1, 16_000)], fail_at=0)
    call, rec = CallAudio(), Recorder()
    result = await speak_chunk(job(), tts, call, rec, run_inline)
    assert result.failed
    assert len(rec.frames) == 1 and rec.frames[0].final and rec.frames[0].pcm == bytes(FRAME_BYTES)


async def test_barge_in_stops_between_frames_and_synthesis_stops() -> None:
    tts = FakeTTS([tone(0.2, 16_000) for _ in range(10)])
    call = CallAudio(epoch=1)

    def barge_in_after_third(frame: AudioFrame) -> None:
        if frame.seq == 3:
            call.observe_epoch(2)

    rec = Recorder(after=barge_in_after_third)
    result = await speak_chunk(job(epoch=1), tts, call, rec, run_inline)
    assert result.cancelled
    assert len(rec.frames) == 3
    assert not any(f.last_in_chunk or f.final for f in rec.frames)
    assert tts.produced == 1  # no further sentence was synthesized


async def test_stale_chunk_sends_nothing() -> None:
    tts = FakeTTS([tone(0.2, 16_000)])
    call, rec = CallAudio(epoch=3), Recorder()
    result = await speak_chunk(job(epoch=2), tts, call, rec, run_inline)
    assert result.cancelled and rec.frames == [] and tts.produced == 0


async def test_call_end_stops_speaking() -> None:
    registry = CallAudioRegistry()
    call = registry.get("CA1")
    assert call is not None
    rec = Recorder(after=lambda f: registry.end("CA1") if f.seq == 2 else None)
    result = await speak_chunk(job(), FakeTTS([tone(0.2, 16_000)] * 3), call, rec, run_inline)
    assert result.cancelled and len(rec.frames) == 2


async def test_synthesis_runs_off_the_event_loop() -> None:
    tts = FakeTTS([tone(0.1, 16_000)] * 2)
    rec = Recorder()

    async def in_thread(fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    await speak_chunk(job(), tts, CallAudio(), rec, in_thread)
    assert "MainThread" not in tts.threads
    assert len(rec.frames) == 10


def test_registry_epochs_end_and_sweep() -> None:
    reg = CallAudioRegistry(ended_capacity=2)
    a = reg.get("A")
    assert a is not None and not a.is_stale(0)
    reg.barge_in("A", 3)
    reg.barge_in("A", 1)  # epochs never go back
    assert a.epoch == 3 and a.is_stale(2) and not a.is_stale(3)
    reg.end("A")
    assert a.ended and a.is_stale(99)
    assert reg.get("A") is None and reg.barge_in("A", 5) is None and "A" not in reg
    reg.end("B")
    reg.end("C")
    assert not reg.is_ended("A")  # bounded memory: the oldest ended call is forgotten
    assert reg.get("D") is not None
    assert reg.sweep(idle_s=0.0) == 1 and len(reg) == 0


def test_spoken_chunks_are_remembered_boundedly() -> None:
    call = CallAudio()
    for i in range(300):
        call.mark_spoken(f"e{i}", keep=256)
    assert "e299" in call.spoken and "e0" not in call.spoken and len(call.spoken) == 256


def test_voices_resolve_aliases_and_fall_back_to_default() -> None:
    loads: list[str] = []

    def loader(name: str) -> Any:
        def load() -> FakeTTS:
            loads.append(name)
            return FakeTTS([])
        return load

    voices = Voices((VoiceSpec("joe", "d", loader("joe"), aliases=("en_US-joe-medium",)),
                     VoiceSpec("amy", "d", loader("amy"))), default="joe")
    assert voices.resolve(None) == "joe"
    assert voices.resolve("en_US-joe-medium") == "joe"
    assert voices.resolve("AMY") == "amy"
    assert voices.resolve("nobody") == "joe"
    assert voices.get("nobody") is voices.get("joe")
    voices.get("amy")
    assert loads == ["joe", "amy"]
    with pytest.raises(UnknownVoice):
        Voices((VoiceSpec("joe", "d", loader("joe")),), default="amy")


@pytest.mark.parametrize(
    "text,pieces",
    [
        ("Sure, I can book a table for two.", ["Sure,", "I can book a table for two."]),
        ("Hello, how can I help you today?", ["Hello,", "how can I help you today?"]),
        ("Well; that is fine: really.", ["Well;", "that is fine: really."]),
        ("It costs 1,000 dollars in total.", ["It costs 1,000 dollars in total."]),
        ("Yes, sure.", ["Yes, sure."]),  # too little left to be worth a second piece
        ("No commas here.", ["No commas here."]),
        ("1, 2, 3 and four", ["1, 2, 3 and four"]),
    ],
)
def test_split_first_clause(text: str, pieces: list[str]) -> None:
    assert split_first_clause(text) == pieces


async def test_first_clause_is_synthesized_on_its_own() -> None:
    tts, rec = FakeTTS([tone(0.04, 16_000)]), Recorder()
    j = ChunkJob(turn_id="t", epoch=0, index=0, text="Sure, I can help with that.", final=True,
                 split_first_clause=True)
    await speak_chunk(j, tts, CallAudio(), rec, run_inline)
    assert tts.texts == ["Sure,", "I can help with that."]
    assert len(rec.frames) == 4 and rec.frames[-1].final


class _SlowLoad(FakeEngine):
    """Loading its voice takes longer than one sentence may (a replica restarted on a busy machine)."""

    def voice_specs(self) -> tuple[VoiceSpec, ...]:
        def load() -> FakeTTS:
            time.sleep(0.3)
            return self.fake_voice

        return (VoiceSpec("fake", "a slow-loading test voice", load),)


async def test_a_slow_voice_load_at_start_is_waited_for_but_a_slow_sentence_is_not() -> None:
    slow = FakeTTS([tone(0.1, 16_000)])
    engine = _SlowLoad(slow, timeout_s=0.1)
    try:
        await engine.start()  # the load (0.3 s) is longer than the synthesis timeout (0.1 s): still ready
        assert engine.loaded and slow.texts  # and warmed up
        with pytest.raises(TimeoutError):  # a step of speaking stays bounded
            await engine.run(time.sleep, 0.3)
    finally:
        engine.close()


async def test_frames_ready_together_go_several_a_message_and_split_back_into_the_same_frames() -> None:
    """``TTS_FRAMES_PER_MESSAGE``: a piece's frames go up to that many a message, never waiting for the next piece;
    ``AudioFrame.split`` gives back exactly the frames, seqs, indices and flags one frame a message would have."""
    pieces = [tone(0.1, 16_000), tone(0.24, 16_000)]  # 5 frames, then 12
    one_call, one = CallAudio(epoch=1), Recorder()
    await speak_chunk(job(epoch=1), FakeTTS(pieces), one_call, one, run_inline)
    many_call, many = CallAudio(epoch=1), Recorder()
    result = await speak_chunk(job(epoch=1), FakeTTS(pieces), many_call, many, run_inline, frames_per_message=5)
    # one frame held back per piece (only the end says which is last): 4 of the first piece, then the held one
    # and 11 of the second in groups of 5, then the last alone
    assert [len(m.pcm) // FRAME_BYTES for m in many.frames] == [4, 5, 5, 2, 1]
    assert result.frames == 17 and many_call.seq == one_call.seq == 17
    # the same frames but for the wall-clock stamp of when each was cut (the two runs are not the same millisecond
    # on a busy machine); a message's frames share its stamp
    def unstamped(frames: list[AudioFrame]) -> list[AudioFrame]:
        return [dataclasses.replace(f, ts_ms=0) for f in frames]

    assert unstamped([f for m in many.frames for f in m.split()]) == unstamped(one.frames)
    assert all(f.ts_ms == m.ts_ms > 0 for m in many.frames for f in m.split())
    assert [m.frame for m in many.frames] == [0, 4, 9, 14, 16]
    assert [m.last_in_chunk for m in many.frames] == [False] * 4 + [True]


def test_split_of_a_single_frame_is_itself_and_an_odd_tail_stays_on_the_last() -> None:
    f = AudioFrame(pcm=b"\x01" * FRAME_BYTES, seq=7, turn_id="t", chunk=0, frame=3, final=True, synth_ms=5.0)
    assert f.split() == [f]
    odd = AudioFrame(pcm=b"\x02" * (2 * FRAME_BYTES + 4), seq=7, turn_id="t", chunk=0, frame=3,
                     last_in_chunk=True, final=True, synth_ms=5.0)
    a, b = odd.split()
    assert (len(a.pcm), len(b.pcm)) == (FRAME_BYTES, FRAME_BYTES + 4)
    assert (a.seq, a.frame, a.synth_ms, a.last_in_chunk, a.final) == (7, 3, 5.0, False, False)
    assert (b.seq, b.frame, b.synth_ms, b.last_in_chunk, b.final) == (8, 4, None, True, True)
