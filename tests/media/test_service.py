"""The media service in-process against a real NATS server, fed real-time caller audio.

These tests run their own nats-server: on a shared server any other media replica (a developer's
``make run``) would claim the test's calls too and publish its own pauses and utterances for them.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from voice_devstack.stack import embedded_nats
from voice_media.service import MediaService
from voice_media.settings import MediaSettings
from voice_runtime.bus import Bus
from voice_schemas import events

from .caller import Call
from .conftest import RATE, Speech, phone_band, with_silence

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private_nats() -> Iterator[str]:
    with embedded_nats() as url:
        yield url


@pytest.fixture(scope="module")
async def media(private_nats: str, silero: Any, smart_turn: Any) -> AsyncIterator[MediaService]:
    settings = MediaSettings(nats_url=private_nats, shutdown_grace_s=2.0)
    svc = MediaService(settings, vad=silero, turn_model=smart_turn, calls_durable="media-calls-test")
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def client(private_nats: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(private_nats, "test-caller")
    yield b
    await b.close()


async def test_caller_turn_becomes_one_utterance(media: MediaService, client: Bus,
                                                 piper_speech: dict[str, Speech]) -> None:
    s = piper_speech["sentence"]
    lead = 600
    call = Call(client, media)
    await call.start()
    wall0 = time.time() - time.monotonic()  # monotonic -> epoch seconds
    t0 = await call.speak(with_silence(s.audio, lead, 1500))
    t_utt, utt = await call.wait_for(events.UtteranceCaptured)
    await asyncio.sleep(0.3)
    await call.end()

    kinds = call.types()
    assert kinds[0] == "vad.speech_started" and kinds.index("vad.speech_stopped") < kinds.index("utterance.captured")
    assert len(call.of(events.UtteranceCaptured)) == 1
    assert not call.of(events.PausePlayout) and not call.of(events.BargeIn)
    assert {e.turn_id for _, e in call.got} == {utt.turn_id} and utt.epoch == 0
    _, began = call.of(events.SpeechStarted)[0]
    _, stopped = call.of(events.SpeechStopped)[-1]
    assert abs(began.data.at_ms - (lead + s.onset_ms)) <= 100
    assert abs(stopped.data.at_ms - (lead + s.offset_ms)) <= 100

    data: events.UtteranceCaptured = utt.data
    audio = np.frombuffer(base64.b64decode(data.audio_b64), dtype=np.int16)
    assert data.sample_rate == RATE and len(audio) == (data.end_ms - data.start_ms) * 16
    assert data.start_ms == began.data.at_ms - 200
    assert abs(data.end_ms - (lead + s.offset_ms + 100)) <= 100
    assert data.end_of_turn in ("model", "silence")
    true_offset_wall = (wall0 + t0 + (lead + s.offset_ms) / 1000) * 1000
    assert abs(data.speech_end_wall_ms - true_offset_wall) <= 120
    received_after_offset = (wall0 + t_utt) * 1000 - true_offset_wall
    assert data.end_of_turn_ms <= received_after_offset + 30  # never claims less than the wait the test saw
    print(f"\nend of turn by {data.end_of_turn}: decided {data.end_of_turn_ms:.0f} ms after the speech "
          f"offset; utterance received {received_after_offset:.0f} ms after the true offset")


@pytest.mark.parametrize("band", ["wideband", "phone"])
async def test_speech_over_the_agent_pauses_then_barges_in(media: MediaService, client: Bus,
                                                           piper_speech: dict[str, Speech], band: str) -> None:
    s = piper_speech["sentence"]
    lead = 600
    audio = with_silence(s.audio, lead, 1500)
    call = Call(client, media)
    await call.start()
    await call.agent_starts_speaking()
    t0 = await call.speak(phone_band(audio) if band == "phone" else audio)
    await call.wait_for(events.UtteranceCaptured)
    await call.end()

    controls = [k for k in call.types() if k.startswith("control.")]
    assert controls == ["control.pause", "control.barge_in"]
    t_pause, pause = call.of(events.PausePlayout)[0]
    t_barge, barge = call.of(events.BargeIn)[0]
    assert pause.epoch == 0 and pause.turn_id == "agent-turn-1"
    assert barge.epoch == 1 and barge.data.speech_ms >= 400
    (_, utt), = call.of(events.UtteranceCaptured)
    assert utt.epoch == 1
    (_, began), = call.of(events.SpeechStarted)[:1]
    assert began.data.agent_speaking
    onset = t0 + (lead + s.onset_ms) / 1000
    pause_ms, barge_ms = (t_pause - onset) * 1000, (t_barge - onset) * 1000
    print(f"\n[{band}] speech onset -> PausePlayout received {pause_ms:.0f} ms; -> BargeIn {barge_ms:.0f} ms")
    assert pause_ms <= 150


async def test_backchannel_resumes_the_agent_and_is_no_turn(media: MediaService, client: Bus,
                                                            piper_speech: dict[str, Speech]) -> None:
    call = Call(client, media)
    await call.start()
    await call.agent_starts_speaking()
    await call.speak(with_silence(piper_speech["burst"].audio, 600, 1500))
    await call.wait_for(events.ResumePlayout)
    await asyncio.sleep(0.8)
    await call.end()

    controls = [k for k in call.types() if k.startswith("control.")]
    assert controls == ["control.pause", "control.resume"]
    assert not call.of(events.UtteranceCaptured) and not call.of(events.BargeIn)
    assert all(e.epoch == 0 for _, e in call.got)


async def test_caller_frames_two_a_message_make_the_same_turn_as_one_a_message(
        media: MediaService, client: Bus, piper_speech: dict[str, Speech]) -> None:
    """A loaded ingress sends caller frames two a message (``CALLER_FRAMES_PER_MESSAGE``): media hears the same
    audio at the same media times, so the turn's onset, offset and captured audio are those of single frames."""
    s = piper_speech["sentence"]
    audio = with_silence(s.audio, 600, 1500)
    turns = []
    for per_message in (1, 2):
        call = Call(client, media)
        await call.start()
        await call.speak(audio, frames_per_message=per_message)
        _, utt = await call.wait_for(events.UtteranceCaptured)
        await call.end()
        (_, began), = call.of(events.SpeechStarted)[:1]
        _, stopped = call.of(events.SpeechStopped)[-1]
        turns.append((began.data.at_ms, stopped.data.at_ms, utt.data.start_ms,
                      base64.b64decode(utt.data.audio_b64)[:16000]))
    assert turns[0] == turns[1]
