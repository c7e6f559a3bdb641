"""A text chat (channel ``chat``) has no audio: media acks its ``CallStarted`` and never claims it."""

from __future__ import annotations

import pytest
from voice_media.service import CALLS_NOT_CLAIMED, MediaService
from voice_media.settings import MediaSettings
from voice_runtime.memory import InMemoryBus
from voice_schemas import events, make, subjects

from .fakes import FixedTurnModel, LoudnessVad

pytestmark = pytest.mark.unit


async def test_a_chat_is_not_claimed_and_a_phone_call_is() -> None:
    bus, model = InMemoryBus("media"), FixedTurnModel(True)
    svc = MediaService(MediaSettings(shutdown_grace_s=1.0), vad=LoudnessVad(), turn_model=model)
    await svc.start(bus=bus)
    try:
        chat, phone = subjects.new_call_id(), subjects.new_call_id()
        skipped = CALLS_NOT_CLAIMED.labels("text_only")._value.get()
        for call_id, channel in ((chat, events.Channel.chat), (phone, events.Channel.twilio)):
            await bus.publish(make(events.CallStarted(agent_id="a1", agent_version=1, channel=channel),
                                   tenant_id="t1", call_id=call_id))
        await bus.wait_for(lambda: phone in svc.calls)
        await bus.settle()
        assert chat not in svc.calls
        assert CALLS_NOT_CLAIMED.labels("text_only")._value.get() == skipped + 1
        # nothing follows the chat's audio subject
        assert not any(s.subject == subjects.audio_in(chat) for s in bus._subs)
        consumer = next(c for c in bus._consumers if c.d.durable == "media-calls")
        assert consumer.acked == 2 and consumer.dead == 0
    finally:
        await svc.stop()
        model.close()
