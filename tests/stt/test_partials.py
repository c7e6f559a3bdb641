"""Partial transcripts on the in-memory bus: the stt service follows a caller's turn through media's turn-audio
answers (a fake media here, the real one in test_moonshine.py) and publishes what a fake recognizer hears."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from voice_runtime.memory import InMemoryBus
from voice_schemas import Envelope, make, subjects
from voice_schemas.audio import TurnAudio, TurnAudioRequest
from voice_schemas.events import (
    CallEnded,
    EndReason,
    SpeechStarted,
    TranscriptFinalized,
    TranscriptPartial,
    UtteranceCaptured,
)
from voice_stt.partials import FINALIZED_KEPT, FollowedCall
from voice_stt.service import SttService
from voice_stt.settings import SttSettings

from .fakes import FakeSTT

pytestmark = pytest.mark.unit

MS = 32  # bytes of 16 kHz PCM16 per millisecond


def heard(pcm16: bytes) -> str:
    """What the fake recognizer "hears": how much audio it was given, so each re-decode differs."""
    return f"{len(pcm16) // MS} ms"


@dataclass
class FakeMedia:
    """Answers turn-audio requests for one call as media would: the turn so far, one reader at a time."""

    bus: InMemoryBus
    call_id: str
    turn_id: str | None = None
    start_ms: int = 800
    speaking: bool = True
    epoch: int = 0
    grow_ms: int = 100  # the caller speaks on: each answer holds this much more audio than the last
    end_ms: int = 1000
    readers: list[str] = field(default_factory=list)
    taken_by: str | None = None
    sub: Any = None

    async def start(self) -> FakeMedia:
        self.sub = await self.bus.subscribe(subjects.media_call_rpc(self.call_id, subjects.TURN_AUDIO), self.answer)
        return self

    async def answer(self, msg: Any) -> None:
        reader = TurnAudioRequest.from_bytes(msg.data).reader
        self.readers.append(reader)
        if self.turn_id is None:
            out = TurnAudio()
        elif self.taken_by is not None and self.taken_by != reader:
            out = TurnAudio(turn_id=self.turn_id, taken=True)
        else:
            if self.speaking:
                self.end_ms += self.grow_ms
            out = TurnAudio(
                turn_id=self.turn_id,
                epoch=self.epoch,
                start_ms=self.start_ms,
                end_ms=self.end_ms,
                speaking=self.speaking,
                pcm=bytes((self.end_ms - self.start_ms) * MS),
            )
        await self.bus.publish_nowait(msg.reply, out.to_bytes())

    async def stop(self) -> None:
        await self.sub.unsubscribe()


def onset(call_id: str, turn_id: str) -> Envelope[Any]:
    return make(SpeechStarted(at_ms=1000), tenant_id="t1", call_id=call_id, turn_id=turn_id)


def utterance(call_id: str, turn_id: str, ms: int = 1500) -> Envelope[Any]:
    u = UtteranceCaptured(
        utterance_id=turn_id, start_ms=800, end_ms=800 + ms, audio_b64=base64.b64encode(bytes(ms * MS)).decode()
    )
    return make(u, tenant_id="t1", call_id=call_id, turn_id=turn_id, epoch=0, seq=3)


async def running(stt: FakeSTT, **settings: Any) -> tuple[SttService, InMemoryBus]:
    bus = InMemoryBus("stt")
    svc = SttService(SttSettings(shutdown_grace_s=1.0, stt_partial_interval_ms=100, **settings), stt=stt)
    await svc.start(bus=bus)
    return svc, bus


@pytest.fixture
async def stage() -> AsyncIterator[tuple[SttService, InMemoryBus, FakeSTT]]:
    stt = FakeSTT(text_of=heard)
    svc, bus = await running(stt, stt_partials="on")
    yield svc, bus, stt
    await svc.stop()
    stt.close()


def of(bus: InMemoryBus, kind: type, call_id: str) -> list[Envelope[Any]]:
    return [e for e in bus.events(kind) if e.call_id == call_id]


async def test_partials_of_a_growing_turn_come_in_order_then_the_final_then_nothing(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    svc, bus, _ = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id, turn_id="turn-1").start()
    await bus.publish(onset(call_id, "turn-1"))
    await bus.wait_for(lambda: len(of(bus, TranscriptPartial, call_id)) >= 3)
    assert set(media.readers) == {svc.reader}

    await bus.publish(utterance(call_id, "turn-1"))  # end of turn: media's final utterance
    await bus.wait_for(lambda: of(bus, TranscriptFinalized, call_id))
    await asyncio.sleep(0.35)  # media still answers with the finalized turn (as it may, briefly): no partial of it
    media.turn_id = None  # media has no turn in progress any more: the follower stops and forgets the call
    await bus.wait_for(lambda: call_id not in svc.partials.calls)  # type: ignore[union-attr]
    await bus.settle()

    kinds = [type(e.data).__name__ for e in bus.events(TranscriptPartial, TranscriptFinalized) if e.call_id == call_id]
    assert kinds[-1] == "TranscriptFinalized" and set(kinds[:-1]) == {"TranscriptPartial"}
    partials = of(bus, TranscriptPartial, call_id)
    ends = [p.data.end_ms for p in partials]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    for p in partials:
        d: TranscriptPartial = p.data
        assert (p.tenant_id, p.turn_id, d.utterance_id, d.start_ms) == ("t1", "turn-1", "turn-1", 800)
        assert d.text == f"{d.end_ms - d.start_ms} ms"  # the whole turn so far was decoded, not a piece of it
    assert len({p.id for p in partials}) == len(partials)
    await media.stop()


async def test_a_pause_is_decoded_once_and_silence_is_not_re_decoded(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    svc, bus, stt = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id, turn_id="turn-1").start()
    await bus.publish(onset(call_id, "turn-1"))
    await bus.wait_for(lambda: len(of(bus, TranscriptPartial, call_id)) >= 2)
    media.speaking = False  # the segment ended; the turn may still go on
    asked = len(media.readers)
    await bus.wait_for(lambda: len(media.readers) >= asked + 4)
    decodes_in_pause = len(stt.calls)
    await bus.wait_for(lambda: len(media.readers) >= asked + 8)
    assert len(stt.calls) == decodes_in_pause  # asked on, but nothing new to decode
    media.speaking = True  # speech resumes within the same turn
    await bus.wait_for(lambda: len(stt.calls) > decodes_in_pause)
    media.turn_id = None
    await bus.wait_for(lambda: call_id not in svc.partials.calls)  # type: ignore[union-attr]
    await media.stop()


async def test_a_busy_engine_skips_partials_without_asking_media() -> None:
    gate = threading.Event()
    stt = FakeSTT(gate=gate, text_of=heard)
    svc, bus = await running(stt, stt_partials="on")
    try:
        call_id = subjects.new_call_id()
        media = await FakeMedia(bus, call_id, turn_id="turn-1").start()
        await bus.publish(utterance(subjects.new_call_id(), "other-turn"))  # a final holds the only worker
        await bus.wait_for(lambda: stt.running == 1)
        await bus.publish(onset(call_id, "turn-1"))
        await asyncio.sleep(0.5)  # five ticks
        assert media.readers == [] and of(bus, TranscriptPartial, call_id) == []
        gate.set()
        await bus.wait_for(lambda: of(bus, TranscriptPartial, call_id))
        media.turn_id = None
        await bus.wait_for(lambda: call_id not in svc.partials.calls)  # type: ignore[union-attr]
        await media.stop()
    finally:
        gate.set()
        await svc.stop()
        stt.close()


async def test_a_call_read_by_another_replica_is_not_followed_here(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    svc, bus, stt = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id, turn_id="turn-1", taken_by="stt-another-replica").start()
    await bus.publish(onset(call_id, "turn-1"))
    await bus.wait_for(lambda: media.readers)
    await bus.wait_for(lambda: call_id not in svc.partials.calls)  # type: ignore[union-attr]
    assert stt.calls == [] and of(bus, TranscriptPartial, call_id) == []
    await media.stop()


async def test_the_end_of_the_call_stops_its_follower_and_frees_its_state(
    stage: tuple[SttService, InMemoryBus, FakeSTT],
) -> None:
    svc, bus, _ = stage
    call_id = subjects.new_call_id()
    media = await FakeMedia(bus, call_id, turn_id="turn-1").start()
    await bus.publish(onset(call_id, "turn-1"))
    await bus.wait_for(lambda: of(bus, TranscriptPartial, call_id))
    followed = svc.partials.calls[call_id]  # type: ignore[union-attr]
    await bus.publish(make(CallEnded(reason=EndReason.caller_hangup), tenant_id="t1", call_id=call_id))
    await bus.wait_for(lambda: call_id not in svc.partials.calls)  # type: ignore[union-attr]
    assert followed.task is not None
    await bus.wait_for(followed.task.done)
    published = len(of(bus, TranscriptPartial, call_id))
    await bus.publish(onset(call_id, "turn-2"))  # a late onset of an ended call starts nothing
    await asyncio.sleep(0.3)
    assert call_id not in svc.partials.calls and len(of(bus, TranscriptPartial, call_id)) == published  # type: ignore[union-attr]
    await media.stop()


async def test_a_call_gone_from_media_is_let_go(stage: tuple[SttService, InMemoryBus, FakeSTT]) -> None:
    svc, bus, _ = stage
    call_id = subjects.new_call_id()  # no media answers for it
    await bus.publish(onset(call_id, "turn-1"))
    await bus.wait_for(lambda: call_id in svc.partials.calls)  # type: ignore[union-attr]
    await bus.wait_for(lambda: call_id not in svc.partials.calls)  # type: ignore[union-attr]
    assert of(bus, TranscriptPartial, call_id) == []


async def test_no_more_calls_are_followed_than_the_bound() -> None:
    stt = FakeSTT(text_of=heard)
    svc, bus = await running(stt, stt_partials="on", stt_partial_max_calls=2)
    try:
        calls = [subjects.new_call_id() for _ in range(3)]
        medias = [await FakeMedia(bus, c, turn_id="turn-1", grow_ms=10).start() for c in calls]
        for c in calls:
            await bus.publish(onset(c, "turn-1"))
        await bus.settle()
        assert set(svc.partials.calls) == set(calls[:2])  # type: ignore[union-attr]
        for m in medias:
            m.turn_id = None
        await bus.wait_for(lambda: not svc.partials.calls)  # type: ignore[union-attr]
        for m in medias:
            await m.stop()
    finally:
        await svc.stop()
        stt.close()


async def test_partials_follow_the_engine_unless_the_setting_says() -> None:
    stt = FakeSTT()  # an engine that does not offer partials (as whisper)
    assert not stt.partials_by_default
    for setting, expected in (("auto", False), ("on", True), ("off", False)):
        svc = SttService(SttSettings(stt_partials=setting), stt=stt)
        assert (svc.partials is not None) is expected, setting
    from voice_stt.engines import ENGINES

    moonshine = ENGINES.get("moonshine")(SttSettings())
    try:
        assert moonshine.partials_by_default
        assert SttService(SttSettings(stt_engine="moonshine"), stt=moonshine).partials is not None
        assert SttService(SttSettings(stt_partials="off"), stt=moonshine).partials is None
    finally:
        moonshine.close()
    stt.close()


async def test_without_partials_nothing_is_asked_of_media() -> None:
    stt = FakeSTT(text_of=heard)
    svc, bus = await running(stt)  # auto, and the fake engine does not offer partials
    try:
        call_id = subjects.new_call_id()
        media = await FakeMedia(bus, call_id, turn_id="turn-1").start()
        await bus.publish(onset(call_id, "turn-1"))
        await asyncio.sleep(0.3)
        assert svc.partials is None and media.readers == [] and bus.events(TranscriptPartial) == []
        await media.stop()
    finally:
        await svc.stop()
        stt.close()


def test_a_followed_call_remembers_a_bounded_number_of_finalized_utterances() -> None:
    followed = FollowedCall("CA1", "t1")
    for i in range(FINALIZED_KEPT * 3):
        followed.finalize(f"u{i}")
    assert len(followed.finalized) == FINALIZED_KEPT and f"u{FINALIZED_KEPT * 3 - 1}" in followed.finalized


def test_turn_audio_round_trips_and_refuses_garbage() -> None:
    audio = TurnAudio(turn_id="t-1", epoch=2, start_ms=800, end_ms=900, speaking=True, pcm=bytes(100 * MS))
    assert TurnAudio.from_bytes(audio.to_bytes()) == audio
    assert TurnAudio.from_bytes(TurnAudio().to_bytes()) == TurnAudio()
    assert TurnAudioRequest.from_bytes(TurnAudioRequest("stt-1").to_bytes()) == TurnAudioRequest("stt-1")
    for bad in (b"", b"raw pcm with no metadata", b'{"turn_id": "t"}\n\x01', b"[1]\n", b'{"epoch": "x"}\n'):
        with pytest.raises(ValueError, match="not a turn audio answer"):
            TurnAudio.from_bytes(bad)
    for bad in (b"", b"{}", b'{"reader": ""}', b'{"reader": 5}', b"[]"):
        with pytest.raises(ValueError, match="reader"):
            TurnAudioRequest.from_bytes(bad)
