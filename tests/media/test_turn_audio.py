"""media answers stt's request for the caller's turn in progress (partial transcripts): the turn so far from its
onset less the pre-roll, one reader at a time, nothing once the turn is over or the call has ended."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from voice_media.service import MediaService
from voice_media.settings import MediaSettings
from voice_runtime.bus import NoResponders
from voice_runtime.memory import InMemoryBus
from voice_schemas import events, subjects
from voice_schemas.audio import TurnAudio, TurnAudioRequest

from .caller import Call
from .fakes import FixedTurnModel, LoudnessVad, quiet, tone

pytestmark = pytest.mark.unit


@pytest.fixture
async def media() -> AsyncIterator[tuple[MediaService, InMemoryBus]]:
    bus, model = InMemoryBus("media"), FixedTurnModel(False)
    svc = MediaService(
        MediaSettings(shutdown_grace_s=1.0, turn_model_enabled=False), vad=LoudnessVad(), turn_model=model
    )
    await svc.start(bus=bus)
    yield svc, bus
    await svc.stop()
    model.close()


async def ask(bus: InMemoryBus, call_id: str, reader: str = "stt-a", *, likely_final: bool = False) -> TurnAudio:
    raw = await bus.request(
        subjects.media_call_rpc(call_id, subjects.TURN_AUDIO), TurnAudioRequest(reader, likely_final).to_bytes(),
        timeout=2.0,
    )
    return TurnAudio.from_bytes(raw)


async def test_the_turn_so_far_is_handed_to_one_reader(media: tuple[MediaService, InMemoryBus]) -> None:
    svc, bus = media
    call = Call(bus, svc)
    await call.start()
    assert await ask(bus, call.call_id) == TurnAudio()  # nobody speaks: no turn
    speech = tone(700)
    await call.speak(np.concatenate([quiet(300), speech]), realtime=False)
    await call.wait_for(events.SpeechStarted)
    got = await ask(bus, call.call_id)
    ((_, began),) = call.of(events.SpeechStarted)
    assert got.turn_id == began.turn_id and got.speaking and not got.taken and got.epoch == 0
    assert got.start_ms == began.data.at_ms - svc.settings.pre_roll_ms and got.end_ms == 1000
    samples = np.frombuffer(got.pcm, dtype="<i2")
    assert len(samples) == (got.end_ms - got.start_ms) * 16 and got.sample_rate == 16_000
    assert np.array_equal(samples[-len(speech) :], speech)  # the audio itself, up to now

    other = await ask(bus, call.call_id, reader="stt-b")  # another replica: refused while the first reads
    assert other.taken and other.turn_id == got.turn_id and other.pcm == b""
    svc.calls[call.call_id]._turn_audio_reader = ("stt-a", 0.0)  # the first has not asked for longer than the TTL
    assert not (await ask(bus, call.call_id, reader="stt-b")).taken

    await call.speak(quiet(1500), realtime=False)  # the hangover ends the turn
    await call.wait_for(events.UtteranceCaptured)
    assert await ask(bus, call.call_id, reader="stt-b") == TurnAudio()
    await call.end()
    with pytest.raises(NoResponders):  # the call is released: nobody answers for it
        await ask(bus, call.call_id)


async def test_the_likely_final_ask_is_always_answered_and_takes_no_place(
        media: tuple[MediaService, InMemoryBus]) -> None:
    svc, bus = media
    call = Call(bus, svc)
    await call.start()
    assert await ask(bus, call.call_id, likely_final=True) == TurnAudio()  # no turn: nothing, and no place taken
    assert svc.calls[call.call_id]._turn_audio_reader is None
    await call.speak(np.concatenate([quiet(300), tone(700)]), realtime=False)
    await call.wait_for(events.SpeechStarted)
    partials = await ask(bus, call.call_id, reader="stt-a")
    place = svc.calls[call.call_id]._turn_audio_reader
    assert place is not None and place[0] == "stt-a"

    likely = await ask(bus, call.call_id, reader="stt-b", likely_final=True)  # another replica, at a pause
    assert not likely.taken and likely.turn_id == partials.turn_id and likely.pcm == partials.pcm
    assert (likely.start_ms, likely.end_ms) == (partials.start_ms, partials.end_ms)
    assert svc.calls[call.call_id]._turn_audio_reader == place, "the partials' reader keeps its place, unrefreshed"
    assert (await ask(bus, call.call_id, reader="stt-b")).taken  # its partials still wait their turn

    svc.calls[call.call_id]._turn_audio_reader = ("stt-a", 0.0)  # the partials' reader went quiet (TTL)
    await ask(bus, call.call_id, reader="stt-c", likely_final=True)
    assert svc.calls[call.call_id]._turn_audio_reader == ("stt-a", 0.0), "a likely final ask never takes the place"
    await call.end()
