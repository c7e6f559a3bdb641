"""Likely final transcripts: at a pause the stt service decodes the turn so far (from a fake media's turn-audio
answer) and publishes it as a likely final partial; the final transcript reuses it when the caller said no more.
The fake recognizer "hears" how much audio it was given, so a reused text and a fresh decode tell apart."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY
from voice_runtime.bus import Bus
from voice_runtime.memory import InMemoryBus
from voice_runtime.ports import BusPort
from voice_schemas import Envelope, make, parse, subjects
from voice_schemas.audio import TurnAudio, TurnAudioRequest
from voice_schemas.events import (
    CallEnded,
    EndReason,
    SpeechPaused,
    TranscriptFinalized,
    TranscriptPartial,
    UtteranceCaptured,
)
from voice_stt.likely_final import LikelyFinal, LikelyFinals, likely_final_event_id
from voice_stt.partials import partial_event_id
from voice_stt.service import SttService
from voice_stt.settings import SttSettings

from .fakes import FakeSTT

MS = 32  # bytes of 16 kHz PCM16 per millisecond
START, PAUSE_END = 800, 1640  # the turn's audio start and media's "now" when asked at the pause


def heard(pcm16: bytes) -> str:
    return f"{len(pcm16) // MS} ms"


@dataclass
class FakeMedia:
    """Answers turn-audio requests for one call as media would (likely final asks are always answered)."""

    bus: BusPort
    call_id: str
    turn_id: str | None = "turn-1"
    epoch: int = 2
    end_ms: int = PAUSE_END
    asks: list[TurnAudioRequest] = field(default_factory=list)
    sub: Any = None

    async def start(self) -> FakeMedia:
        self.sub = await self.bus.subscribe(subjects.media_call_rpc(self.call_id, subjects.TURN_AUDIO), self.answer)
        return self

    async def answer(self, msg: Any) -> None:
        self.asks.append(TurnAudioRequest.from_bytes(msg.data))
        if self.turn_id is None:
            out = TurnAudio()
        else:
            out = TurnAudio(turn_id=self.turn_id, epoch=self.epoch, start_ms=START, end_ms=self.end_ms,
                            speaking=False, pcm=bytes((self.end_ms - START) * MS))
        await self.bus.publish_nowait(msg.reply, out.to_bytes())

    async def stop(self) -> None:
        await self.sub.unsubscribe()


def pause(call_id: str, turn_id: str = "turn-1", at_ms: int = 1600) -> Envelope[Any]:
    return make(SpeechPaused(at_ms=at_ms, speech_ms=700), tenant_id="t1", call_id=call_id, turn_id=turn_id, epoch=2)


def utterance(call_id: str, speech_end_ms: int, turn_id: str = "turn-1", ms: int = 1000) -> Envelope[Any]:
    """The end of turn: ``ms`` of audio, so a fresh decode hears "<ms> ms" (the likely final heard 840 ms)."""
    u = UtteranceCaptured(utterance_id=turn_id, start_ms=START, end_ms=START + ms, speech_end_ms=speech_end_ms,
                          audio_b64=base64.b64encode(bytes(ms * MS)).decode())
    return make(u, tenant_id="t1", call_id=call_id, turn_id=turn_id, epoch=2, seq=4)


def of(bus: InMemoryBus, kind: type, call_id: str) -> list[Envelope[Any]]:
    return [e for e in bus.events(kind) if e.call_id == call_id]


def likely_of(bus: InMemoryBus, call_id: str) -> list[Envelope[Any]]:
    return [e for e in of(bus, TranscriptPartial, call_id) if e.data.likely_final]


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("voice_stt_likely_final_total", {"outcome": outcome}) or 0.0


async def running(stt: FakeSTT, **settings: Any) -> tuple[SttService, InMemoryBus]:
    bus = InMemoryBus("stt")
    svc = SttService(SttSettings(shutdown_grace_s=1.0, stt_partials="off", **settings), stt=stt)
    await svc.start(bus=bus)
    return svc, bus


@pytest.fixture
async def stage() -> AsyncIterator[tuple[SttService, InMemoryBus, FakeSTT]]:
    stt = FakeSTT(text_of=heard)
    svc, bus = await running(stt)
    yield svc, bus, stt
    await svc.stop()
    stt.close()


# ------------------------------------------------------------------ on the in-memory bus
@pytest.mark.unit
async def test_a_pause_publishes_the_turn_so_far_as_a_likely_final(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    svc, bus, stt = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id).start()
    await bus.publish(pause(call_id))
    await bus.wait_for(lambda: likely_of(bus, call_id))
    (env,) = of(bus, TranscriptPartial, call_id)
    d: TranscriptPartial = env.data
    assert d.likely_final and d.text == "840 ms"  # the whole turn media answered with, decoded once
    assert (d.utterance_id, d.start_ms, d.end_ms) == ("turn-1", START, PAUSE_END) and d.stt_ms > 0
    assert (env.tenant_id, env.call_id, env.turn_id, env.epoch) == ("t1", call_id, "turn-1", 2)
    assert env.id == likely_final_event_id(call_id, "turn-1", PAUSE_END)
    assert env.id != partial_event_id(call_id, "turn-1", PAUSE_END)  # never dropped as an ordinary partial's twin
    assert media.asks == [TurnAudioRequest(svc.reader, likely_final=True)]
    assert len(stt.calls) == 1
    await media.stop()


@pytest.mark.unit
async def test_the_final_reuses_the_likely_final_when_it_covered_all_the_speech(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    _, bus, stt = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id).start()
    await bus.publish(pause(call_id))
    await bus.wait_for(lambda: likely_of(bus, call_id))
    reused = count("reused")
    await bus.publish(utterance(call_id, speech_end_ms=1600))  # the speech ended before the audio decoded did
    await bus.wait_for(lambda: of(bus, TranscriptFinalized, call_id))
    (final,) = of(bus, TranscriptFinalized, call_id)
    assert final.data.text == "840 ms" and len(stt.calls) == 1  # the likely text; the utterance was not decoded
    assert (final.data.utterance_id, final.data.start_ms, final.data.end_ms) == ("turn-1", START, START + 1000)
    assert final.data.stt_ms < 100  # nothing decoded: only the look-up
    assert count("reused") == reused + 1
    await media.stop()


@pytest.mark.unit
@pytest.mark.parametrize("speech_end_ms", [1700, 0], ids=["caller_went_on", "offset_unknown"])
async def test_the_final_decodes_again_when_the_likely_final_did_not_cover_the_speech(
    stage: tuple[SttService, InMemoryBus, FakeSTT], speech_end_ms: int,
) -> None:
    _, bus, stt = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id).start()
    await bus.publish(pause(call_id))
    await bus.wait_for(lambda: likely_of(bus, call_id))
    await bus.publish(utterance(call_id, speech_end_ms=speech_end_ms))
    await bus.wait_for(lambda: of(bus, TranscriptFinalized, call_id))
    (final,) = of(bus, TranscriptFinalized, call_id)
    assert final.data.text == "1000 ms" and len(stt.calls) == 2  # its own audio, decoded
    await media.stop()


@pytest.mark.unit
async def test_a_final_waits_for_a_likely_final_still_decoding_which_is_then_not_published() -> None:
    gate = threading.Event()
    stt = FakeSTT(gate=gate, text_of=heard)
    svc, bus = await running(stt)
    try:
        call_id = subjects.new_call_id()
        media = await FakeMedia(bus, call_id).start()
        await bus.publish(pause(call_id))
        await bus.wait_for(lambda: stt.running == 1)
        await bus.publish(utterance(call_id, speech_end_ms=1600))  # the end of turn while the pause decodes
        await asyncio.sleep(0.1)
        assert of(bus, TranscriptFinalized, call_id) == []
        gate.set()
        await bus.wait_for(lambda: of(bus, TranscriptFinalized, call_id))
        await bus.settle()
        (final,) = of(bus, TranscriptFinalized, call_id)
        assert final.data.text == "840 ms" and len(stt.calls) == 1
        assert likely_of(bus, call_id) == []  # the final had started: a likely final now would follow it
        await media.stop()
    finally:
        gate.set()
        await svc.stop()
        stt.close()


@pytest.mark.unit
async def test_a_busy_engine_delays_the_likely_final_but_does_not_skip_it() -> None:
    gate = threading.Event()
    stt = FakeSTT(gate=gate, text_of=heard)
    svc, bus = await running(stt)
    try:
        call_id = subjects.new_call_id()
        media = await FakeMedia(bus, call_id).start()
        await bus.publish(utterance(subjects.new_call_id(), speech_end_ms=1600, turn_id="other"))  # holds the worker
        await bus.wait_for(lambda: stt.running == 1)
        await bus.publish(pause(call_id))
        await bus.wait_for(lambda: media.asks)
        await asyncio.sleep(0.1)
        assert likely_of(bus, call_id) == [] and len(stt.calls) == 1
        gate.set()
        await bus.wait_for(lambda: likely_of(bus, call_id))
        assert len(stt.calls) == 2
        await media.stop()
    finally:
        gate.set()
        await svc.stop()
        stt.close()


@pytest.mark.unit
async def test_an_ended_call_is_not_decoded_and_its_likely_finals_are_forgotten(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    svc, bus, stt = stage
    assert svc.likely is not None
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id).start()
    await bus.publish(pause(call_id))
    await bus.wait_for(lambda: likely_of(bus, call_id))
    assert (call_id, "turn-1") in svc.likely.results
    await bus.publish(make(CallEnded(reason=EndReason.caller_hangup), tenant_id="t1", call_id=call_id))
    await bus.wait_for(lambda: call_id in svc.ended)
    assert not [k for k in svc.likely.results if k[0] == call_id]
    await bus.publish(pause(call_id, "turn-2", at_ms=5000))  # a late pause of the ended call
    await bus.settle()
    assert len(media.asks) == 1 and len(stt.calls) == 1 and len(likely_of(bus, call_id)) == 1
    await media.stop()


@pytest.mark.unit
@pytest.mark.parametrize("media_turn", [None, "turn-2"], ids=["no_turn", "another_turn"])
async def test_a_pause_of_a_turn_media_no_longer_has_is_not_decoded(
    stage: tuple[SttService, InMemoryBus, FakeSTT], media_turn: str | None,
) -> None:
    _, bus, stt = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id, turn_id=media_turn).start()
    await bus.publish(pause(call_id, "turn-1"))
    await bus.wait_for(lambda: media.asks)
    await bus.settle()
    assert stt.calls == [] and of(bus, TranscriptPartial, call_id) == []
    await media.stop()


@pytest.mark.unit
async def test_no_words_are_not_published_and_the_final_decodes_itself() -> None:
    stt = FakeSTT(text="")
    svc, bus = await running(stt)
    try:
        call_id = subjects.new_call_id()
        media = await FakeMedia(bus, call_id).start()
        empty = count("empty")
        await bus.publish(pause(call_id))
        await bus.wait_for(lambda: count("empty") == empty + 1)
        await bus.publish(utterance(call_id, speech_end_ms=1600))
        await bus.wait_for(lambda: of(bus, TranscriptFinalized, call_id))
        assert of(bus, TranscriptPartial, call_id) == [] and len(stt.calls) == 2
        await media.stop()
    finally:
        await svc.stop()
        stt.close()


@pytest.mark.unit
async def test_stt_likely_final_off_asks_and_decodes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_LIKELY_FINAL", "off")
    assert SttSettings().stt_likely_final == "off"
    monkeypatch.delenv("STT_LIKELY_FINAL")
    assert SttSettings().stt_likely_final == "on"
    stt = FakeSTT(text_of=heard)
    svc, bus = await running(stt, stt_likely_final="off")
    try:
        assert svc.likely is None
        call_id = subjects.new_call_id()
        media = await FakeMedia(bus, call_id).start()
        await bus.publish(pause(call_id))
        await bus.settle()
        assert media.asks == [] and stt.calls == [] and of(bus, TranscriptPartial, call_id) == []
        await bus.publish(utterance(call_id, speech_end_ms=1600))
        await bus.wait_for(lambda: of(bus, TranscriptFinalized, call_id))
        assert of(bus, TranscriptFinalized, call_id)[0].data.text == "1000 ms"
        await media.stop()
    finally:
        await svc.stop()
        stt.close()


@pytest.mark.unit
async def test_kept_results_are_bounded_and_the_latest_pause_of_a_turn_wins() -> None:
    stt = FakeSTT()
    likely = LikelyFinals(stt, ask=None, publish=None, language=None, spawn=None, kept=3)  # type: ignore[arg-type]
    for i in range(5):
        likely._keep((f"CA{i}", "turn-1"), LikelyFinal(0, 100))
    assert list(likely.results) == [("CA2", "turn-1"), ("CA3", "turn-1"), ("CA4", "turn-1")]
    first, later = LikelyFinal(0, 100), LikelyFinal(0, 200)
    likely._keep(("CA4", "turn-1"), first)
    likely._keep(("CA4", "turn-1"), later)
    assert likely.results[("CA4", "turn-1")] is later and len(likely.results) == 3
    assert later.covers(0, 200) and not later.covers(0, 201) and not later.covers(0, 0)
    assert not LikelyFinal(500, 900).covers(400, 800)  # the likely audio began after the utterance's
    stt.close()


# ------------------------------------------------------------------ on real NATS
@pytest.mark.integration
async def test_pause_likely_final_and_its_reuse_on_real_nats(nats_url: str) -> None:
    stt = FakeSTT(text_of=heard)
    svc = SttService(SttSettings(nats_url=nats_url, shutdown_grace_s=1.0, stt_partials="off"), stt=stt)
    await svc.start()
    client = await Bus.connect(nats_url, "test-media")
    try:
        call_id = subjects.new_call_id()
        media = await FakeMedia(client, call_id).start()
        got: list[Envelope[Any]] = []

        async def record(msg: Any) -> None:
            got.append(parse(msg.data))

        sub = await client.nc.subscribe(subjects.call_filter(call_id, "transcript", "*"), cb=record)
        await client.publish(pause(call_id))
        for _ in range(500):
            if got:
                break
            await asyncio.sleep(0.01)
        (likely,) = got
        assert likely.data.likely_final and likely.data.text == "840 ms"
        assert likely.id == likely_final_event_id(call_id, "turn-1", PAUSE_END)
        await client.publish(utterance(call_id, speech_end_ms=1600))
        for _ in range(500):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        final = got[1]
        assert isinstance(final.data, TranscriptFinalized) and final.data.text == "840 ms" and len(stt.calls) == 1
        await sub.unsubscribe()
        await media.stop()
    finally:
        await client.close()
        await svc.stop()
        stt.close()
