"""The media stage on the in-memory bus with fake models: claim, VAD, end of turn and barge-in as the running
service does them, no broker and no model. The caller is the one the real-NATS tests use (``caller.py``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import numpy as np
import pytest
from voice_media.engines import TURN_MODELS, VOICE_ACTIVITY
from voice_media.engines.silero import SileroVoiceActivity
from voice_media.engines.smart_turn import SmartTurnV3
from voice_media.service import MediaService
from voice_media.settings import MediaSettings
from voice_runtime.memory import InMemoryBus
from voice_schemas import events, make, subjects

from .caller import Call
from .fakes import FixedTurnModel, LoudnessVad, quiet, tone

pytestmark = pytest.mark.unit


async def stage(complete: bool) -> tuple[MediaService, InMemoryBus, FixedTurnModel]:
    bus, model = InMemoryBus("media"), FixedTurnModel(complete)
    # no stt on this bus: no likely final words come, so a "complete" does not wait for them (as STT_LIKELY_FINAL=off)
    svc = MediaService(MediaSettings(shutdown_grace_s=1.0, words_wait_ms=0), vad=LoudnessVad(), turn_model=model)
    await svc.start(bus=bus)
    return svc, bus, model


@pytest.fixture
async def media() -> AsyncIterator[tuple[MediaService, InMemoryBus, FixedTurnModel]]:
    svc, bus, model = await stage(complete=True)
    yield svc, bus, model
    await svc.stop()
    model.close()


def controls(call: Call) -> list[str]:
    return [k for k in call.types() if k.startswith("control.")]


async def caller_speaks_over_the_agent(call: Call, speech_ms: int) -> None:
    """The agent is playing (``call.agent_starts_speaking`` or a greeting) and the caller says something."""
    if call.call_id not in call.media.calls:
        await call.start()
        await call.agent_starts_speaking()
    await call.speak(np.concatenate([quiet(300), tone(speech_ms), quiet(800)]), realtime=False)
    await call.wait_for(events.UtteranceCaptured if speech_ms >= 400 else events.ResumePlayout)


async def test_a_caller_turn_ends_on_the_turn_models_answer(
        media: tuple[MediaService, InMemoryBus, FixedTurnModel]) -> None:
    svc, bus, model = media
    assert await svc.check_ready()
    call = Call(bus, svc)
    await call.start()
    await call.speak(np.concatenate([quiet(300), tone(800), quiet(300)]), realtime=False)
    _, utt = await call.wait_for(events.UtteranceCaptured)
    await call.end()
    assert call.types() == ["vad.speech_started", "vad.speech_stopped", "utterance.captured"]
    assert model.asked == 1 and utt.data.end_of_turn == "model"
    (_, began), = call.of(events.SpeechStarted)
    assert abs(began.data.at_ms - 300) <= 64 and utt.data.start_ms == began.data.at_ms - 200  # pre-roll
    audio = np.frombuffer(base64.b64decode(utt.data.audio_b64), dtype=np.int16)
    assert len(audio) == (utt.data.end_ms - utt.data.start_ms) * 16 and utt.epoch == 0


async def test_without_a_complete_answer_the_hangover_ends_the_turn() -> None:
    svc, bus, model = await stage(complete=False)
    try:
        call = Call(bus, svc)
        await call.start()
        await call.speak(np.concatenate([quiet(300), tone(800), quiet(1200)]), realtime=False)
        _, utt = await call.wait_for(events.UtteranceCaptured)
        # the model was asked (its task may run after the hangover already ended the turn, on a busy machine)
        for _ in range(500):
            if model.asked:
                break
            await asyncio.sleep(0.01)
        await call.end()
        assert model.asked == 1 and utt.data.end_of_turn == "silence"
    finally:
        await svc.stop()
        model.close()


async def test_speech_over_the_agent_pauses_then_barges_in(
        media: tuple[MediaService, InMemoryBus, FixedTurnModel]) -> None:
    svc, bus, _ = media
    call = Call(bus, svc)
    await caller_speaks_over_the_agent(call, 900)
    await call.end()
    assert controls(call) == ["control.pause", "control.barge_in"]
    (_, utt), = call.of(events.UtteranceCaptured)
    (_, pause), = call.of(events.PausePlayout)
    (_, barge), = call.of(events.BargeIn)
    assert (pause.turn_id, pause.epoch) == ("agent-turn-1", 0)
    assert barge.epoch == 1 and barge.data.speech_ms >= 400 and utt.epoch == 1


async def test_a_backchannel_resumes_the_agent_and_is_no_turn(
        media: tuple[MediaService, InMemoryBus, FixedTurnModel]) -> None:
    svc, bus, _ = media
    call = Call(bus, svc)
    await caller_speaks_over_the_agent(call, 200)
    await bus.settle()  # every frame scored: nothing more comes of it
    await call.end()
    assert controls(call) == ["control.pause", "control.resume"]
    assert not call.of(events.UtteranceCaptured) and all(e.epoch == 0 for _, e in call.got)


async def test_agent_audio_that_started_before_the_claim_counts_as_playing(
        media: tuple[MediaService, InMemoryBus, FixedTurnModel]) -> None:
    svc, bus, _ = media
    call = Call(bus, svc)
    await bus.publish(make(events.PlayoutStarted(), tenant_id="default", call_id=call.call_id,
                           turn_id="greeting", epoch=0))
    await call.start()  # claimed with the greeting already playing
    await caller_speaks_over_the_agent(call, 900)
    await call.end()
    assert controls(call) == ["control.pause", "control.barge_in"]


async def test_a_call_that_ended_before_its_claim_is_released(
        media: tuple[MediaService, InMemoryBus, FixedTurnModel]) -> None:
    svc, bus, _ = media
    call_id = subjects.new_call_id()
    await bus.publish(make(events.CallEnded(reason=events.EndReason.caller_hangup), tenant_id="default",
                           call_id=call_id))
    started = events.CallStarted(agent_id="default-agent", agent_version=1, channel=events.Channel.test)
    await bus.publish(make(started, tenant_id="default", call_id=call_id))
    await bus.settle()
    assert call_id not in svc.calls and bus.dead_letters == []


def test_silero_and_smart_turn_are_the_default_engines() -> None:
    s = MediaSettings()
    assert (s.vad_engine, s.turn_model) == ("silero", "smart-turn-v3")
    assert isinstance(VOICE_ACTIVITY.get(s.vad_engine)(s), SileroVoiceActivity)
    model = TURN_MODELS.get(s.turn_model)(MediaSettings(turn_model_workers=2, turn_model_timeout_s=1.5))
    assert isinstance(model, SmartTurnV3) and (model.workers, model.timeout_s) == (2, 1.5)
    model.close()
