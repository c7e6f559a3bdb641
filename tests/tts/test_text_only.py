"""A text chat's reply chunks (``text_only``) reach tts and are never synthesised (in-memory bus, fake engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_runtime.memory import InMemoryBus
from voice_schemas import make, subjects
from voice_schemas.events import ReplyChunk
from voice_tts.service import SKIPPED, TtsService
from voice_tts.settings import TtsSettings

from .fakes import FakeEngine, FakeTTS, tone

pytestmark = pytest.mark.unit


@pytest.fixture
async def tts() -> AsyncIterator[tuple[TtsService, InMemoryBus, FakeTTS]]:
    voice = FakeTTS([tone(0.1, 16_000) for _ in range(3)])
    bus, engine = InMemoryBus("tts"), FakeEngine(voice)
    svc = TtsService(TtsSettings(shutdown_grace_s=1.0), engine=engine)
    await svc.start(bus=bus)
    voice.texts.clear()
    yield svc, bus, voice
    await svc.stop()
    engine.close()


async def test_text_only_chunks_are_acked_unspoken_and_leave_no_state(
        tts: tuple[TtsService, InMemoryBus, FakeTTS]) -> None:
    svc, bus, voice = tts
    chat, phone = subjects.new_call_id(), subjects.new_call_id()
    frames: dict[str, int] = {chat: 0, phone: 0}

    async def on_frame(msg: Any) -> None:
        frames[subjects.call_id_of(msg.subject)] += 1

    for call_id in (chat, phone):
        await bus.subscribe(subjects.audio_out(call_id), on_frame)
    skipped = SKIPPED.labels("text_only")._value.get()
    for i, text in enumerate(("We open at eight.", "See you then!")):
        await bus.publish(make(ReplyChunk(index=i, text=text, final=i == 1, text_only=True), tenant_id="t1",
                               call_id=chat, turn_id="t1"))
    await bus.publish(make(ReplyChunk(index=0, text="Hello.", final=True), tenant_id="t1", call_id=phone,
                           turn_id="t1"))
    await bus.wait_for(lambda: frames[phone] > 0)
    await bus.settle()
    assert frames[chat] == 0 and voice.texts == ["Hello."]  # only the phone call's chunk was synthesised
    assert SKIPPED.labels("text_only")._value.get() == skipped + 2
    assert chat not in svc.calls and phone in svc.calls  # a chat gets no per-call state
    consumer = next(c for c in bus._consumers if c.d.durable == "tts-replies")
    assert consumer.acked == 3 and consumer.dead == 0  # every chunk was delivered and acked
