"""stt with the real whisper model and a real NATS: piper speech in, final transcripts out."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_devstack.speech import phone_line_pcm16, speech_pcm16, word_error_rate
from voice_runtime.bus import H_MSG_ID, Bus
from voice_schemas import Envelope, make, parse, subjects
from voice_schemas.events import CallEnded, EndReason, TranscriptFinalized, UtteranceCaptured
from voice_stt.engines.whisper import WhisperSettings, WhisperSpeechToText
from voice_stt.service import SttService, transcript_event_id
from voice_stt.settings import SttSettings

pytestmark = pytest.mark.integration

GREETING = "Hello, how can I help you today?"
QUESTION = "I would like to book a table for two people tomorrow evening."


@pytest.fixture(scope="module")
async def stt_service(nats_url: str) -> AsyncIterator[SttService]:
    svc = SttService(SttSettings(nats_url=nats_url, shutdown_grace_s=2.0, stt_engine="whisper"))
    await svc.start()
    assert await svc.check_ready()
    yield svc
    await svc.stop()


def utterance(call_id: str, pcm: bytes, rate: int = 16_000, utterance_id: str = "u-1") -> Envelope[Any]:
    ms = len(pcm) * 1000 // (2 * rate)
    return make(
        UtteranceCaptured(utterance_id=utterance_id, start_ms=500, end_ms=500 + ms, sample_rate=rate,
                          audio_b64=base64.b64encode(pcm).decode(), end_of_turn_ms=180.0,
                          speech_end_wall_ms=time.time() * 1000),
        tenant_id="tenant-a", call_id=call_id, turn_id=f"turn-{utterance_id}", epoch=2, seq=5,
    )


async def next_transcript(sub: Any, timeout: float = 30.0) -> Envelope[Any]:
    msg = await sub.next_msg(timeout=timeout)
    return parse(msg.data)


async def test_piper_speech_round_trips_through_whisper() -> None:
    stt = WhisperSpeechToText(WhisperSettings(stt_model="tiny.en", stt_cpu_threads=2))
    await stt.start()
    result = await stt.transcribe(speech_pcm16(GREETING), 16_000, "en")
    stt.close()
    assert word_error_rate(GREETING, result.text) <= 0.15, result.text
    assert result.language == "en" and 1.0 < result.duration_s < 4.0


async def test_utterance_becomes_one_final_transcript(stt_service: SttService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    sub = await bus.nc.subscribe(TranscriptFinalized.subject_for(call_id))
    env = utterance(call_id, speech_pcm16(QUESTION))
    await bus.publish(env)
    out = await next_transcript(sub)
    t = out.data
    assert isinstance(t, TranscriptFinalized)
    assert out.id == transcript_event_id(env.id)
    assert (out.tenant_id, out.call_id, out.turn_id, out.epoch) == ("tenant-a", call_id, "turn-u-1", 2)
    u = env.data
    assert (t.utterance_id, t.start_ms, t.end_ms) == (u.utterance_id, u.start_ms, u.end_ms)
    assert t.end_of_turn_ms == u.end_of_turn_ms and t.speech_end_wall_ms == u.speech_end_wall_ms
    assert 0 < t.stt_ms < 10_000
    assert word_error_rate(QUESTION, t.text) <= 0.2, t.text
    await sub.unsubscribe()


async def test_phone_line_audio_at_8khz(stt_service: SttService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    sub = await bus.nc.subscribe(TranscriptFinalized.subject_for(call_id))
    await bus.publish(utterance(call_id, phone_line_pcm16(GREETING), rate=8_000))
    t = (await next_transcript(sub)).data
    assert word_error_rate(GREETING, t.text) <= 0.15, t.text
    await sub.unsubscribe()


async def test_redelivered_utterance_yields_one_stored_transcript(stt_service: SttService, bus: Bus) -> None:
    call_id = subjects.new_call_id()
    subject = TranscriptFinalized.subject_for(call_id)
    sub = await bus.nc.subscribe(subject)
    env = utterance(call_id, speech_pcm16("Yes please."))
    await bus.publish(env)
    # the same event again under another message id: JetStream stores it, stt handles it twice
    await bus.js.publish(env.subject, env.to_bytes(), headers={H_MSG_ID: env.id + "-again"})
    first, second = await next_transcript(sub), await next_transcript(sub)
    assert first.id == second.id == transcript_event_id(env.id)
    info = await bus.js.stream_info("CALLS", subjects_filter=subject)
    assert (info.state.subjects or {}).get(subject) == 1
    await sub.unsubscribe()


async def test_utterance_of_an_ended_call_is_dropped(stt_service: SttService, bus: Bus) -> None:
    ended, live = subjects.new_call_id(), subjects.new_call_id()
    sub_ended = await bus.nc.subscribe(TranscriptFinalized.subject_for(ended))
    sub_live = await bus.nc.subscribe(TranscriptFinalized.subject_for(live))
    await bus.publish(make(CallEnded(reason=EndReason.caller_hangup), tenant_id="tenant-a", call_id=ended))
    for _ in range(500):
        if ended in stt_service.ended:
            break
        await asyncio.sleep(0.01)
    assert ended in stt_service.ended
    pcm = speech_pcm16("Goodbye.")
    await bus.publish(utterance(ended, pcm))
    await bus.publish(utterance(live, pcm))
    await next_transcript(sub_live)  # one at a time, in stream order: the ended call's came first
    with pytest.raises(asyncio.TimeoutError):
        await sub_ended.next_msg(timeout=0.3)
    await sub_ended.unsubscribe()
    await sub_live.unsubscribe()
