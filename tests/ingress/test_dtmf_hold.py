"""Keys pressed and holds in ingress: the DTMF tones decoded back with Goertzel filters (what a phone menu's
receiver does), a live Twilio call on a real WebSocket that gets the tones as ``media`` after the agent's words, a
hang-up that waits for them, holds that end at their limit or when the agent speaks again, a transport that cannot
send keys, and a browser call's track.

Ingress runs on the in-memory bus (as the other ingress tests); brain's side is ``tests/brain/test_dtmf_hold.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from voice_ingress import g711, tones
from voice_ingress.transports.webrtc import WebRtcCall
from voice_runtime import calltoken
from voice_schemas import AgentConfig, events, make, subjects
from voice_schemas import chat as rpc
from voice_schemas.chat import ChatAnswer

from bench.twilio_caller import TwilioCaller

from .fakes import FakeTransport, Ingress, reply
from .test_twilio_route import PUBLIC, TOKEN, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# ---------------------------------------------------------------- the tones
@pytest.mark.unit
@pytest.mark.parametrize("rate", [8000, 16000])
def test_every_key_decodes_back_to_itself(rate: int) -> None:
    keys = "0123456789*#ABCD"
    assert tones.detect(tones.dtmf(keys, rate), rate) == keys
    assert tones.detect(tones.dtmf("5", rate), rate) == "5"
    assert len(tones.dtmf("12", rate)) == round(tones.duration_s("12") * rate)


@pytest.mark.unit
def test_the_mulaw_frames_a_twilio_caller_gets_decode_back_and_are_whole_frames() -> None:
    frames = tones.g711_frames("4721#", "ulaw")
    assert all(len(f) == 160 for f in frames) and len(frames) == math.ceil(5 * 160 / 20)
    assert tones.detect(g711.decode(b"".join(frames), "ulaw"), 8000) == "4721#"
    assert tones.detect(g711.decode(b"".join(tones.g711_frames("9*", "alaw")), "alaw"), 8000) == "9*"
    pcm = b"".join(tones.pcm16_frames("36"))
    assert len(pcm) % 640 == 0 and tones.detect(np.frombuffer(pcm, np.int16), 16000) == "36"


@pytest.mark.unit
def test_noise_a_chord_and_a_single_frequency_are_not_keys() -> None:
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(8000) * 3000).astype(np.int16)
    t = np.arange(8000) / 8000
    single = (8000 * np.sin(2 * np.pi * 697 * t)).astype(np.int16)  # a row without a column
    chord = (3000 * np.sin(2 * np.pi * np.outer((220, 440, 660, 880), t)).sum(axis=0)).astype(np.int16)
    for pcm in (noise, single, chord, np.zeros(8000, np.int16)):
        assert tones.detect(pcm, 8000) == ""


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["", "12 3", "E", "1" * 33, "\uff11"])
def test_keys_that_are_not_dtmf_are_refused(bad: str) -> None:
    with pytest.raises(tones.BadDigits):
        tones.check_digits(bad)


@pytest.mark.unit
def test_the_hold_tone_is_a_soft_beep_then_silence() -> None:
    hold = tones.HoldTone()
    period = [hold.next_frame() for _ in range(int(tones.HOLD_PERIOD_S / 0.02))]
    assert all(len(f) == 640 for f in period) and hold.next_frame() == period[0]
    beep = np.frombuffer(b"".join(period[:10]), np.int16)
    assert 0 < np.abs(beep).max() < 0.1 * 32767
    assert not any(np.frombuffer(f, np.int16).any() for f in period[11:])
    assert tones.detect(np.frombuffer(b"".join(period), np.int16), 16000) == ""


# ---------------------------------------------------------------- a Twilio call
@contextlib.asynccontextmanager
async def twilio_call() -> AsyncIterator[tuple[Ingress, TwilioCaller, str]]:
    async with serving(twilio_auth_token=TOKEN) as (ingress, url):
        c = TwilioCaller(url, auth_token=TOKEN, public_base_url=PUBLIC)
        call_id = await c.dial()
        await c.connect()
        await ingress.bus.wait_for(lambda: ingress.events(events.CallAnswered, call_id=call_id))
        try:
            yield ingress, c, call_id
        finally:
            await c.close()


async def command(ingress: Ingress, call_id: str, data: Any, turn_id: str | None = None) -> None:
    await ingress.bus.publish(make(data, tenant_id="tenant-a", call_id=call_id, turn_id=turn_id))


def loud(payload: bytes) -> bool:
    """A frame of tone (the agent frames of these tests are silence with a short tag at the start)."""
    pcm = g711.decode(payload, "ulaw").astype(np.float64)
    return float(np.sqrt((pcm ** 2).mean())) > 4000


def sent(ingress: Ingress, call_id: str) -> list[events.DtmfSent]:
    return [e.data for e in ingress.events(events.DtmfSent, call_id=call_id)]


def holds_ended(ingress: Ingress, call_id: str) -> list[events.HoldEnded]:
    return [e.data for e in ingress.events(events.HoldEnded, call_id=call_id)]


async def test_keys_go_to_a_twilio_caller_as_tones_after_the_agents_words_and_decode_back() -> None:
    async with twilio_call() as (ingress, c, call_id):
        # the agent's "I'll press two, then hash" is still being synthesised when its keys arrive
        await command(ingress, call_id, events.SendDtmf(digits="2#", after_playout=True), turn_id="t1")
        await ingress.bus.settle()
        assert not sent(ingress, call_id) and not c.frames
        for chunk in reply("t1", [10, 10]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: sent(ingress, call_id), timeout=15)
        [done] = sent(ingress, call_id)
        assert done.ok and done.keys == 2 and done.reason is None
        # the caller got the agent's words, then the tones (as `media`: nothing else goes on a Media Stream)
        tone_frames = math.ceil(tones.duration_s("2#") / 0.02)
        await ingress.bus.wait_for(lambda: len(c.frames) >= 20 + tone_frames, timeout=10)
        first_tone = next(i for i, r in enumerate(c.frames) if loud(r))
        assert first_tone >= 20 and c.marks_echoed[-1] == "t1:0:1:f"
        heard = g711.decode(b"".join(r.payload for r in c.received), "ulaw")
        assert tones.detect(heard, 8000) == "2#"
        # the agent's next words come after the tones, never over them
        for chunk in reply("t2", [10]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: "t2:0:0:f" in c.marks_echoed, timeout=10)
        last_tone = max(i for i, r in enumerate(c.frames) if loud(r))
        assert last_tone < len(c.frames) - 10
        assert tones.detect(g711.decode(b"".join(r.payload for r in c.received), "ulaw"), 8000) == "2#"


async def test_a_hang_up_that_came_with_keys_waits_for_their_tones() -> None:
    async with twilio_call() as (ingress, c, call_id):
        await command(ingress, call_id, events.SendDtmf(digits="1234", after_playout=True), turn_id="bye")
        await command(ingress, call_id, events.HangUp(after_playout=True), turn_id="bye")
        for chunk in reply("bye", [5]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: ingress.events(events.CallEnded, call_id=call_id), timeout=15)
        [ended] = ingress.events(events.CallEnded, call_id=call_id)
        assert ended.data.reason == events.EndReason.agent_hangup
        assert [s.ok for s in sent(ingress, call_id)] == [True]
        assert await c.wait_closed(5)
        # every tone reached the caller before the call was closed
        assert tones.detect(g711.decode(b"".join(r.payload for r in c.received), "ulaw"), 8000) == "1234"
        types = [e.type for e in ingress.events(events.DtmfSent, events.CallEnded, call_id=call_id)]
        assert types == ["call.dtmf_sent", "call.ended"]


async def test_a_hold_plays_its_tone_until_its_limit_or_until_the_agent_speaks_again() -> None:
    async with twilio_call() as (ingress, c, call_id):
        # the hold line plays, then the hold: a soft 440 Hz beep the caller hears, until the limit
        await command(ingress, call_id, events.Hold(max_s=1.0, audio="tone"), turn_id="t1")
        for chunk in reply("t1", [10]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: holds_ended(ingress, call_id), timeout=15)
        [timeout] = holds_ended(ingress, call_id)
        assert timeout.reason == "timeout" and timeout.held_s >= 1.0
        held = c.frames[10:]
        assert len(held) >= 10  # hold audio, paced like the agent's (50 frames a second on an idle machine)
        beep = g711.decode(b"".join(held[:10]), "ulaw").astype(np.float64)
        spectrum = np.abs(np.fft.rfft(beep))
        assert abs(np.argmax(spectrum) * 8000 / len(beep) - tones.HOLD_FREQ) < 10
        await asyncio.sleep(0.3)  # (frames sent before the end may still be on the way)
        count = len(c.frames)
        await asyncio.sleep(0.3)
        assert len(c.frames) == count  # over: nothing more is sent

        # a hold the agent ends by speaking again (the caller spoke and was answered)
        await command(ingress, call_id, events.Hold(max_s=30.0, audio="tone", after_playout=False))
        await ingress.bus.wait_for(lambda: len(c.frames) >= count + 10, timeout=10)
        for chunk in reply("t3", [10]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: len(holds_ended(ingress, call_id)) == 2, timeout=10)
        assert holds_ended(ingress, call_id)[1].reason == "resumed"
        await ingress.bus.wait_for(lambda: "t3:0:0:f" in c.marks_echoed, timeout=10)

        # a silent hold sends nothing and still ends at its limit
        count = len(c.frames)
        await command(ingress, call_id, events.Hold(max_s=1.0, audio="silence", after_playout=False))
        await ingress.bus.wait_for(lambda: len(holds_ended(ingress, call_id)) == 3, timeout=10)
        assert holds_ended(ingress, call_id)[2].reason == "timeout" and len(c.frames) == count
        assert not ingress.events(events.CallEnded, call_id=call_id)


# ---------------------------------------------------------------- transports that cannot, and a browser's track
async def test_a_transport_that_cannot_send_keys_says_so_and_the_call_goes_on() -> None:
    async with Ingress.running() as ingress:
        transport = FakeTransport()
        call_id, _ = await ingress.call(transport)
        await command(ingress, call_id, events.SendDtmf(digits="9", after_playout=False, requested_by="supervisor"))
        await ingress.bus.wait_for(lambda: sent(ingress, call_id), timeout=5)
        [failed] = sent(ingress, call_id)
        assert not failed.ok and failed.reason == "this kind of call cannot send DTMF"
        assert failed.requested_by == "supervisor"
        for chunk in reply("t1", [3]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: len(transport.of("audio")) >= 3, timeout=5)
        assert transport.closed_with is None


async def test_a_browser_call_gets_the_tones_on_its_track_as_its_queue_drains() -> None:
    pc = RTCPeerConnection()
    call = WebRtcCall(pc, "CA-webrtc-test")
    pulled: list[bytes] = []

    async def pull() -> None:
        while True:
            frame = await call.track.recv()
            pulled.append(bytes(frame.planes[0])[:640])

    reader = asyncio.create_task(pull())
    try:
        await call.send_dtmf("159*")  # 32 frames: more than the track queues at once
        assert call.track.queued_frames < call.track.max_frames
        await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + 10
        want = len(tones.pcm16_frames("159*"))
        while call.track.frames_sent < want and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        pcm = np.frombuffer(b"".join(pulled), np.int16)
        assert tones.detect(pcm, 16000) == "159*"
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await call.close(events.EndReason.agent_hangup)


async def test_a_chat_has_no_keypad() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    async with Ingress.running(call_token_key=key) as ingress:
        agent = AgentConfig(id="chat" + subjects.new_id()[:10], tenant_id="tenant-a", version=1, first_message=None)
        raw = agent.model_dump_json().encode()
        await ingress.bus.kv["agents"].put(subjects.agent_version_key(agent.id, 1), raw)
        await ingress.bus.kv["agents"].put(subjects.agent_key(agent.id), raw)
        token, _ = calltoken.mint(base64.b64decode(key), tenant_id="tenant-a", agent_id=agent.id,
                                  channel=rpc.CHANNEL, ttl_s=30, subject="user:u1")
        answer = await ingress.bus.request(subjects.ingress_rpc(rpc.CHANNEL, rpc.OPEN),
                                           rpc.ChatOpen(token=token, wait_s=1).model_dump_json().encode(), timeout=5)
        call_id = ChatAnswer.model_validate_json(answer).call_id
        assert call_id
        await command(ingress, call_id, events.SendDtmf(digits="1", requested_by="supervisor"))
        await ingress.bus.wait_for(lambda: sent(ingress, call_id))
        assert sent(ingress, call_id) == [events.DtmfSent(ok=False, reason="a text chat cannot send DTMF",
                                                          requested_by="supervisor")]
        assert not ingress.events(events.CallEnded, call_id=call_id)
