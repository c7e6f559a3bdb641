"""The WebRTC transport: its playout track and settings as units, then browser calls through the ingress service on
the in-memory bus with real aiortc on both sides (a Python peer plays the browser; offers arrive as the bus requests
control-api sends).

What the caller hears is judged by the audio the peer receives (energy, pitch), never by timings."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from voice_ingress.settings import IngressSettings
from voice_ingress.transports.webrtc import CandidatePolicy, PlayoutTrack, WebRtcEndpoint, WebRtcSettings
from voice_runtime import calltoken
from voice_schemas import events, make, subjects
from voice_schemas.audio import FRAME_BYTES, AudioFrame
from voice_schemas.webrtc import WebRtcAnswer, WebRtcError

from ..conftest import free_port
from .fakes import Ingress
from .webrtc_peer import BrowserPeer, dominant_hz, frames_of, rms, tone

KEY = b"k" * 32
SETTINGS = {"call_token_key": SecretStr(base64.b64encode(KEY).decode()), "webrtc_loopback_candidate": True}
TENANT, AGENT = "default", "default-agent"  # the default agent answers when KV holds none
OFFER = subjects.ingress_rpc("webrtc", "offer")


def grant(*, tenant: str = TENANT, agent: str = AGENT, channel: str = "webrtc", ttl_s: float = 60.0) -> str:
    token, _ = calltoken.mint(KEY, tenant_id=tenant, agent_id=agent, channel=channel, ttl_s=ttl_s)
    return token


async def ask(ingress: Ingress, body: Any) -> WebRtcAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebRtcAnswer.model_validate_json(await ingress.bus.request(OFFER, raw, timeout=20))


def agent_reply(turn: str, chunks: list[bytes], *, epoch: int = 0) -> list[AudioFrame]:
    """A reply as tts sends it: each chunk's 20 ms frames, the last of each chunk flagged (and of the reply)."""
    out: list[AudioFrame] = []
    for c, pcm in enumerate(chunks):
        fs = frames_of(pcm)
        for i, f in enumerate(fs):
            last = i == len(fs) - 1
            out.append(
                AudioFrame(
                    pcm=f,
                    seq=len(out) + 1,
                    epoch=epoch,
                    turn_id=turn,
                    chunk=c,
                    last_in_chunk=last,
                    final=last and c == len(chunks) - 1,
                )
            )
    return out


# ---------------------------------------------------------------- units: the playout track
def _track() -> tuple[PlayoutTrack, list[tuple[str, int]]]:
    marks: list[tuple[str, int]] = []
    track = PlayoutTrack(lambda name: marks.append((name, track.frames_sent)))
    return track, marks


@pytest.mark.unit
async def test_a_mark_is_reported_only_once_the_audio_before_it_was_sent() -> None:
    track, marks = _track()
    audio = frames_of(tone(440, 0.1))  # 5 frames
    for f in audio:
        track.put_audio(f)
    track.put_mark("a")
    for f in audio:
        track.put_audio(f)
    track.put_mark("b")
    sent = []
    for _ in range(12):
        frame = await track.recv()
        sent.append(frame.to_ndarray().tobytes())
    # each mark came back when every frame queued before it had been handed out, not before
    assert marks == [("a", 5), ("b", 10)]
    assert sent[:10] == audio + audio and sent[10:] == [bytes(FRAME_BYTES)] * 2  # then silence
    track.stop()


@pytest.mark.unit
async def test_clear_drops_the_queued_audio_and_its_marks_at_once() -> None:
    track, marks = _track()
    for f in frames_of(tone(440, 1.0)):
        track.put_audio(f)
    track.put_mark("end")
    first = (await track.recv()).to_ndarray().tobytes()
    assert rms(first) > 1000
    track.clear()
    assert track.queued_frames == 0
    after = [(await track.recv()).to_ndarray().tobytes() for _ in range(3)]
    assert after == [bytes(FRAME_BYTES)] * 3 and marks == []  # nothing more of it plays; its mark never comes
    track.put_mark("now")  # after the audio handed out so far: it has played once the next tick is due
    assert marks == []
    assert (await track.recv()).to_ndarray().tobytes() == bytes(FRAME_BYTES) and marks == [("now", 1)]
    track.stop()


@pytest.mark.unit
def test_the_queue_is_bounded() -> None:
    track, _ = _track()
    for f in frames_of(tone(440, 3.0)):
        track.put_audio(f)
    assert track.queued_frames == track.max_frames
    with pytest.raises(ValueError):
        track.put_audio(b"\0" * 10)
    track, marks = _track()
    track.put_audio(bytes(FRAME_BYTES))
    for i in range(track.max_marks + 3):
        track.put_mark(str(i))
    # marks beyond the bound are reported at once rather than kept
    assert [m for m, _ in marks] == [str(track.max_marks + i) for i in range(3)]
    track.stop()


@pytest.mark.unit
def test_settings_are_checked_at_start_up() -> None:
    with pytest.raises(ValidationError, match="WEBRTC_UDP_PORT_MAX"):
        WebRtcSettings(webrtc_udp_port_min=40000)
    with pytest.raises(ValidationError, match="above"):
        WebRtcSettings(webrtc_udp_port_min=40010, webrtc_udp_port_max=40000)
    with pytest.raises(ValidationError, match="stun"):
        WebRtcSettings(webrtc_ice_servers="http://stun.example.org")
    with pytest.raises(ValidationError):
        WebRtcSettings(webrtc_advertised_address="not-an-ip")
    s = WebRtcSettings(
        webrtc_ice_servers="stun:stun.example.org:3478, turn:turn.example.org:3478",
        webrtc_turn_username="u",
        webrtc_turn_credential=SecretStr("p"),
    )
    stun, turn = s.ice_servers()
    assert (stun.urls, stun.username) == ("stun:stun.example.org:3478", None)
    assert (turn.urls, turn.username, turn.credential) == ("turn:turn.example.org:3478", "u", "p")
    assert WebRtcSettings().ice_servers() == []  # none by default: aiortc would otherwise ask a public STUN server
    assert isinstance(IngressSettings(), WebRtcSettings)


@pytest.mark.unit
async def test_candidate_policy_port_range_loopback_and_advertised_address() -> None:
    peer = BrowserPeer()
    try:
        CandidatePolicy(addresses=["127.0.0.1"], ports=(47100, 47109), advertised="203.0.113.7").apply(peer.pc)
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        lines = [ln for ln in peer.pc.localDescription.sdp.splitlines() if ln.startswith("a=candidate")]
        # only the address asked for, on a port of the range; loopback is never replaced by the advertised address
        assert len(lines) == 1 and " 127.0.0.1 " in lines[0]
        assert 47100 <= int(lines[0].split()[5]) <= 47109
    finally:
        await peer.close()
    peer = BrowserPeer()
    try:
        CandidatePolicy(loopback=True, advertised="203.0.113.7").apply(peer.pc)
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        sdp = peer.pc.localDescription.sdp
        assert " 127.0.0.1 " in sdp
        hosts = [ln.split()[4] for ln in sdp.splitlines() if ln.startswith("a=candidate") and " typ host" in ln]
        # every IPv4 interface address is replaced by the advertised one (1:1 NAT)
        assert all(h in ("127.0.0.1", "203.0.113.7") or ":" in h for h in hosts), hosts
    finally:
        await peer.close()


# ---------------------------------------------------------------- browser calls through the service
@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    async with Ingress.running(**SETTINGS) as i:
        yield i


async def connect(ingress: Ingress, peer: BrowserPeer) -> str:
    answer = await ask(ingress, {"token": grant(), **(await peer.offer())})
    assert answer.error is None, answer
    assert answer.call_id and answer.sdp and answer.type == "answer"
    assert "127.0.0.1" in answer.sdp and "opus" in answer.sdp.lower()
    await peer.accept(answer.sdp)
    await peer.wait_connected()
    call_id = answer.call_id
    await ingress.bus.wait_for(lambda: ingress.events(events.CallAnswered, call_id=call_id), timeout=10)
    return call_id


async def control(ingress: Ingress, call_id: str, cmd: Any, *, epoch: int = 0) -> None:
    await ingress.bus.publish(make(cmd, tenant_id=TENANT, call_id=call_id, epoch=epoch))


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_browser_call_carries_audio_both_ways_with_marks(ingress: Ingress) -> None:
    peer = BrowserPeer()
    try:
        call_id = await connect(ingress, peer)
        [started] = ingress.events(events.CallStarted, call_id=call_id)
        assert started.data.channel == events.Channel.webrtc and started.data.agent_id == AGENT
        assert started.tenant_id == TENANT and not started.data.from_number and not started.data.to_number
        [answered] = ingress.events(events.CallAnswered, call_id=call_id)
        assert answered.data.media_format == "audio/opus;rate=48000"

        # caller → platform: Opus decoded and resampled to PCM16 16 kHz, 20 ms frames on audio.in
        caller: list[bytes] = []

        async def on_audio(msg: Any) -> None:
            caller.append(msg.data)

        await ingress.bus.subscribe(subjects.audio_in(call_id), on_audio)
        peer.say(tone(440, 1.0))
        await ingress.bus.wait_for(lambda: sum(rms(f) > 1000 for f in caller) >= 40, timeout=20)
        assert all(len(f) == FRAME_BYTES for f in caller)
        spoken = b"".join(f for f in caller if rms(f) > 1000)
        assert abs(dominant_hz(spoken) - 440) < 15  # the right pitch: resampled at the right rate

        # platform → caller: two chunks paced out, each chunk's mark back once its audio was sent → heard chunks
        reply = agent_reply("t1", [tone(660, 0.6), tone(660, 0.6)])
        await ingress.send_agent_audio(call_id, reply)
        await ingress.bus.wait_for(lambda: ingress.events(events.PlayoutFinished, call_id=call_id), timeout=20)
        [done] = ingress.events(events.PlayoutFinished, call_id=call_id)
        assert done.turn_id == "t1" and done.data.heard_chunks == [0, 1] and not done.data.cleared
        assert [e.data.chunk for e in ingress.events(events.PlayoutMarked, call_id=call_id)] == [0, 1]
        assert await peer.wait_for_silence(0.5, 10) is not None
        heard = peer.loud()
        assert len(reply) * 0.8 <= len(heard) <= len(reply) * 1.2, (len(heard), len(reply))
        assert abs(dominant_hz(b"".join(h.pcm for h in heard)) - 660) < 15
    finally:
        await peer.close()
    # the peer closed its connection: the caller hung up
    await ingress.bus.wait_for(lambda: ingress.events(events.CallEnded, call_id=call_id), timeout=15)
    [ended] = ingress.events(events.CallEnded, call_id=call_id)
    assert ended.data.reason == events.EndReason.caller_hangup
    await ingress.bus.wait_for(lambda: not ingress.service.sessions, timeout=10)


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_barge_in_stops_the_agent_audio_the_browser_receives(ingress: Ingress) -> None:
    peer = BrowserPeer()
    try:
        call_id = await connect(ingress, peer)
        reply = agent_reply("t1", [tone(660, 6.0)])  # 300 frames
        await ingress.send_agent_audio(call_id, reply)
        assert await peer.wait_for_audio(0, 15) is not None
        await asyncio.sleep(0.5)
        barged_at = time.monotonic()
        await control(ingress, call_id, events.BargeIn(at_ms=0), epoch=1)
        await ingress.bus.wait_for(lambda: ingress.events(events.PlayoutFinished, call_id=call_id), timeout=10)
        [done] = ingress.events(events.PlayoutFinished, call_id=call_id)
        assert done.data.cleared
        await asyncio.sleep(2.0)
        after = peer.loud(barged_at)
        before = peer.loud()[: len(peer.loud()) - len(after)]
        # what was queued when the barge-in came never reaches the browser: a few frames in flight at most,
        # out of the ~250 the reply still had
        assert len(before) >= 10 and len(after) <= 50, (len(before), len(after))
        assert len(before) + len(after) < len(reply) - 100
        # the next reply (the new epoch) plays again
        mark = time.monotonic()
        await ingress.send_agent_audio(call_id, agent_reply("t2", [tone(440, 0.5)], epoch=1))
        assert await peer.wait_for_audio(mark, 15) is not None
    finally:
        await peer.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_an_answered_offer_whose_peer_never_connects_ends_its_call(ingress: Ingress) -> None:
    peer = BrowserPeer()
    try:
        answer = await ask(ingress, {"token": grant(), **(await peer.offer())})
        assert answer.call_id
        call_id = answer.call_id  # the answer is never applied: no connection comes
        await ingress.bus.wait_for(lambda: ingress.events(events.CallEnded, call_id=call_id), timeout=20)
        [ended] = ingress.events(events.CallEnded, call_id=call_id)
        assert ended.data.reason == events.EndReason.connection_lost
        assert not ingress.events(events.CallAnswered, call_id=call_id)
        endpoint = next(e for e in ingress.service.endpoints if isinstance(e, WebRtcEndpoint))
        await ingress.bus.wait_for(lambda: endpoint.live_calls == 0, timeout=10)
    finally:
        await peer.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_offers_are_refused_with_a_reason(ingress: Ingress) -> None:
    peer = BrowserPeer()
    try:
        offer = await peer.offer()
        cases: list[tuple[Any, WebRtcError, str]] = [
            ({**offer}, WebRtcError.invalid, "token"),
            ({"token": "", **offer}, WebRtcError.refused, "malformed"),
            ({"token": grant() + "x", **offer}, WebRtcError.refused, "signature"),
            (
                {"token": calltoken.mint(b"z" * 32, tenant_id=TENANT, agent_id=AGENT, channel="webrtc")[0], **offer},
                WebRtcError.refused,
                "signature",
            ),
            ({"token": grant(channel="chat"), **offer}, WebRtcError.refused, "another channel"),
            ({"token": grant(ttl_s=0.001), **offer}, WebRtcError.refused, "expired"),
            ({"token": grant(tenant="tenant-b"), **offer}, WebRtcError.not_found, "agent"),
            ({"token": grant(agent="no-such-agent"), **offer}, WebRtcError.not_found, "agent"),
            ({"token": grant(), "type": "offer", "sdp": "v=0\r\nnot sdp"}, WebRtcError.invalid, "audio section"),
            ({"token": grant(), "type": "answer", "sdp": offer["sdp"]}, WebRtcError.invalid, "type"),
            (b"not json", WebRtcError.invalid, ""),
            (b"x" * 70_000, WebRtcError.invalid, "too large"),
        ]
        for body, error, detail in cases:
            answer = await ask(ingress, body)
            assert answer.error == error and detail in (answer.detail or ""), (
                body if isinstance(body, bytes) else body.get("token"),
                answer,
            )
            assert answer.call_id is None and answer.sdp is None
        # a token starts one call: used again (here, or on any replica: the KV create is shared), it is refused
        token = grant()
        first = await ask(ingress, {"token": token, **offer})
        assert first.call_id
        second = await ask(ingress, {"token": token, **offer})
        assert second.error == WebRtcError.refused and second.detail == "call token already used"
        # calls were created only for the accepted offer
        assert {e.call_id for e in ingress.events(events.CallStarted)} == {first.call_id}
    finally:
        await peer.close()


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_without_a_call_token_key_every_offer_is_refused() -> None:
    async with Ingress.running(webrtc_loopback_candidate=True) as ingress:
        answer = await ask(ingress, {"token": grant(), "type": "offer", "sdp": "v=0"})
        assert answer.error == WebRtcError.unavailable and "CALL_TOKEN_KEY" in (answer.detail or "")


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_media_on_a_pinned_port_range_and_busy_when_it_is_used_up() -> None:
    port = free_port()
    settings = {
        **SETTINGS,
        "webrtc_host_addresses": "127.0.0.1",
        "webrtc_udp_port_min": port,
        "webrtc_udp_port_max": port,
    }
    async with Ingress.running(**settings) as ingress:
        peer, other = BrowserPeer(), BrowserPeer()
        try:
            call_id = await connect(ingress, peer)
            answer_sdp = peer.pc.remoteDescription.sdp
            candidates = [ln.split() for ln in answer_sdp.splitlines() if ln.startswith("a=candidate")]
            assert [(c[4], int(c[5])) for c in candidates] == [("127.0.0.1", port)]
            await ingress.send_agent_audio(call_id, agent_reply("t1", [tone(660, 0.4)]))
            assert await peer.wait_for_audio(0, 15) is not None
            # the one port is taken: the next offer is refused as busy, and its call ends
            answer = await ask(ingress, {"token": grant(), **(await other.offer())})
            assert answer.error == WebRtcError.busy and "no free UDP port" in (answer.detail or "")
        finally:
            await other.close()
            await peer.close()
        started = {e.call_id for e in ingress.events(events.CallStarted)} - {call_id}
        await ingress.bus.wait_for(lambda: {e.call_id for e in ingress.events(events.CallEnded)} >= started, 10)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_stopping_replica_ends_its_browser_calls() -> None:
    ingress = Ingress(**SETTINGS)
    await ingress.start()
    peer = BrowserPeer()
    try:
        call_id = await connect(ingress, peer)
        await ingress.stop()
        [ended] = ingress.events(events.CallEnded, call_id=call_id)
        assert ended.data.reason == events.EndReason.shutdown
        await asyncio.wait_for(peer.ended.wait(), 15)  # the browser's connection was closed
    finally:
        await peer.close()


@pytest.mark.unit
async def test_the_calls_clear_says_how_many_frames_it_dropped() -> None:
    from aiortc import RTCPeerConnection
    from voice_ingress.transports.webrtc import WebRtcCall

    call = WebRtcCall(RTCPeerConnection())
    assert call.can_clear_queued  # what the track still holds is never sent: a pause may send it again
    for f in frames_of(tone(440, 0.1)):
        await call.play(f)
    await call.mark("m")
    assert await call.clear() == 5 and call.track.queued_frames == 0
    assert await call.clear() == 0
    await call.close(events.EndReason.agent_hangup)
