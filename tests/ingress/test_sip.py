"""SIP calls into the ingress service, with SIPp (Debian ``sip-tester``) as the caller and, where the test must hear
what the platform sends, a Python UDP socket as the caller's RTP end. Ingress runs in process on the in-memory bus
(``fakes.Ingress``); SIP and RTP are real sockets on loopback.

What a caller hears is judged by the RTP the socket receives (payloads, sequence numbers, timestamps), never by
timings."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from voice_ingress import g711, rtp
from voice_ingress.transports.sip import SipCall
from voice_schemas import events, make, subjects
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE, AudioFrame

from ..conftest import free_port
from .fakes import NUMBER, Ingress

pytestmark = pytest.mark.integration

SCENARIOS = Path(__file__).parent / "sip_scenarios"
PCAPS = Path("/usr/share/sip-tester")  # Debian sip-tester's captures: g711a.pcap, dtmf_2833_*.pcap
SIPP_TIMEOUT_S = 60


def sip_settings(**extra: Any) -> dict[str, Any]:
    return {"sip_enabled": True, "sip_bind_host": "127.0.0.1", "sip_udp_port": 0, "sip_tcp_port": 0, **extra}


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    async with Ingress.running(**sip_settings()) as i:
        yield i


def sipp_installed() -> bool:
    return shutil.which("sipp") is not None and PCAPS.is_dir()


async def sipp(ingress: Ingress, *args: str, scenario: str | None = None, tcp: bool = False,
               keys: dict[str, str] | None = None, hold_ms: int = 0) -> tuple[int, str]:
    """Run one SIPp call against ingress; its exit status (0: the scenario passed) and its error log."""
    if not sipp_installed():
        pytest.fail("SIPp is not installed: `make sip` installs Debian's sip-tester")
    endpoint = ingress.service.sip
    port = endpoint.tcp_port if tcp else endpoint.udp_port
    work = Path(tempfile.mkdtemp(prefix="sipp-"))
    (work / "pcap").symlink_to(PCAPS)  # the built-in uac_pcap scenario plays pcap/g711a.pcap
    err = work / "errors.log"
    cmd = ["sipp", f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
           "-m", "1", "-nostdin", "-timeout", f"{SIPP_TIMEOUT_S}s", "-timeout_error", "-s", NUMBER,
           "-trace_err", "-error_file", str(err), "-t", "t1" if tcp else "u1"]
    cmd += ["-sf", str(SCENARIOS / scenario)] if scenario else []
    cmd += ["-d", str(hold_ms)] if hold_ms else []
    for k, v in (keys or {}).items():
        cmd += ["-key", k, v]
    proc = await asyncio.create_subprocess_exec(*cmd, *args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL, cwd=work)
    rc = await asyncio.wait_for(proc.wait(), SIPP_TIMEOUT_S + 30)
    errors = err.read_text(errors="replace") if err.exists() else ""
    shutil.rmtree(work, ignore_errors=True)
    return rc, errors[-3000:]


def of(ingress: Ingress, kind: type) -> list[Any]:
    return ingress.events(kind)


class RtpPeer:
    """The caller's RTP end: a UDP socket that records what it receives and can send packets."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[rtp.RtpPacket, tuple[str, int]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RtpPeer:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(self.sock, 2048)
            with contextlib.suppress(rtp.RtpError):
                self.received.append((rtp.parse(data), addr))

    def send(self, packet: rtp.RtpPacket, to: tuple[str, int]) -> None:
        self.sock.sendto(rtp.build(packet), to)


def tone(hz: float, seconds: float, amplitude: int = 8000) -> bytes:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * math.pi * hz * t)).astype(np.int16).tobytes()


def agent_frames(call_id: str, pcm: bytes, turn: str = "t1") -> list[AudioFrame]:
    chunks = [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    return [AudioFrame(pcm=c, seq=i + 1, turn_id=turn, chunk=0, last_in_chunk=i == len(chunks) - 1,
                       final=i == len(chunks) - 1) for i, c in enumerate(chunks)]


def loud(peer: RtpPeer) -> int:
    """Packets the caller received that carry the agent's tone (not silence)."""
    return sum(1 for p, _ in peer.received if np.abs(g711.decode(p.payload, "ulaw")).mean() > 1000)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


# ---------------------------------------------------------------- calls
async def test_a_sipp_call_is_routed_answered_and_ended_by_bye(ingress: Ingress) -> None:
    rc, errors = await sipp(ingress, "-sn", "uac")
    assert rc == 0, errors
    [started] = of(ingress, events.CallStarted)
    assert started.data.channel == events.Channel.sip and started.data.to_number == NUMBER
    assert started.data.provider_call_id and subjects.provider_key(started.data.provider_call_id)
    [answered] = of(ingress, events.CallAnswered)
    assert answered.call_id == started.call_id and answered.data.media_format == "audio/PCMU;rate=8000"
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    [ended] = of(ingress, events.CallEnded)
    assert ended.call_id == started.call_id and ended.data.reason == events.EndReason.caller_hangup
    assert ingress.service.sip.live_calls == 0 and not ingress.service.sip.uas.dialogs


async def test_a_call_over_tcp(ingress: Ingress) -> None:
    rc, errors = await sipp(ingress, "-sn", "uac", tcp=True)
    assert rc == 0, errors
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.caller_hangup


async def test_an_unrouted_number_gets_404_and_no_call(ingress: Ingress) -> None:
    rc, _ = await sipp(ingress, "-sn", "uac", "-s", "+15559999")  # SIPp fails its scenario on the 404
    assert rc != 0 and of(ingress, events.CallStarted) == []


async def test_caller_audio_from_a_pcap_reaches_the_bus_as_frames(ingress: Ingress) -> None:
    frames: list[bytes] = []

    async def on_audio(msg: Any) -> None:
        frames.append(msg.data)

    await ingress.bus.subscribe("call.*.audio.in", on_audio)
    rc, errors = await sipp(ingress, "-sn", "uac_pcap")
    assert rc == 0, errors
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    # g711a.pcap: 236 packets of A-law speech (4.7 s), PCMA negotiated from SIPp's offer
    assert of(ingress, events.CallAnswered)[0].data.media_format == "audio/PCMA;rate=8000"
    assert len(frames) >= 200 and all(len(f) == FRAME_BYTES for f in frames)
    loud = [f for f in frames if np.abs(np.frombuffer(f, dtype=np.int16)).mean() > 300]
    assert len(loud) >= 50  # speech, not silence


async def test_agent_audio_reaches_the_callers_rtp_port_paced_and_symmetric(ingress: Ingress) -> None:
    async with RtpPeer() as peer, RtpPeer() as decoy:
        # the SDP names the decoy's port; the caller's packets come from `peer`: media latches to `peer`
        sipp_call = asyncio.create_task(sipp(ingress, scenario="agent_audio.xml",
                                             keys={"rtp_port": str(decoy.port)}, hold_ms=4000))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)), timeout=20)
        call_id = of(ingress, events.CallAnswered)[0].call_id
        transport = ingress.service.sessions[call_id].transport
        assert isinstance(transport, SipCall)
        ours = ("127.0.0.1", transport.port)
        for i in range(5):  # the caller speaks first: 100 ms of μ-law silence
            peer.send(rtp.RtpPacket(payload_type=0, seq=i, timestamp=160 * i, ssrc=7, payload=b"\xff" * 160), ours)
        await ingress.bus.wait_for(lambda: transport.latched is not None)
        await ingress.send_agent_audio(call_id, agent_frames(call_id, tone(440, 1.0)))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.PlayoutFinished)), timeout=10)
        rc, errors = await sipp_call
        assert rc == 0, errors
    packets = [p for p, _ in peer.received]
    assert len(packets) >= 50 and {p.payload_type for p in packets} == {0}
    assert len({p.ssrc for p in packets}) == 1
    seq = [p.seq for p in packets]
    ts = [p.timestamp for p in packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seq))  # every packet, in order
    assert all((b - a) % 2**32 == 160 for a, b in itertools.pairwise(ts))  # 20 ms steps, steady
    audio = g711.decode(b"".join(p.payload for p in packets), "ulaw")
    assert 420 <= dominant_hz(audio, 8000) <= 460  # the agent's 440 Hz tone, through μ-law at 8 kHz
    assert 45 <= loud(peer) <= 55  # the second of tone, once; silence around it
    # the decoy (the SDP's address) got nothing once the caller's own packets showed where it is
    assert len(decoy.received) <= 2
    marks = of(ingress, events.PlayoutFinished)
    assert marks[0].data.cleared is False and marks[0].data.heard_chunks == [0]


async def test_a_barge_in_flushes_what_is_queued_for_rtp(ingress: Ingress) -> None:
    async with RtpPeer() as peer:
        sipp_call = asyncio.create_task(sipp(ingress, scenario="agent_audio.xml",
                                             keys={"rtp_port": str(peer.port)}, hold_ms=3000))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)), timeout=20)
        call_id = of(ingress, events.CallAnswered)[0].call_id
        await ingress.send_agent_audio(call_id, agent_frames(call_id, tone(440, 2.0)))
        await ingress.bus.wait_for(lambda: loud(peer) >= 10, timeout=10)  # the caller hears the reply start
        await ingress.bus.publish(make(events.BargeIn(at_ms=0), tenant_id="tenant-a", call_id=call_id, epoch=1))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.PlayoutFinished)), timeout=10)
        rc, errors = await sipp_call
        assert rc == 0, errors
    assert 10 <= loud(peer) < 100  # cut off before the 100 frames of the reply had played
    assert of(ingress, events.PlayoutFinished)[0].data.cleared is True


async def test_cancel_before_the_answer_gets_487() -> None:
    async with Ingress.running(**sip_settings(sip_ring_ms=10_000)) as ingress:
        rc, errors = await sipp(ingress, scenario="cancel.xml")
        assert rc == 0, errors
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
        assert of(ingress, events.CallAnswered) == []
        assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.caller_hangup


async def test_a_missing_ack_ends_the_call_with_bye_after_64_t1() -> None:
    async with Ingress.running(**sip_settings(sip_t1_ms=40, sip_t2_ms=160)) as ingress:
        rc, errors = await sipp(ingress, scenario="no_ack.xml")
        assert rc == 0, errors  # SIPp received the BYE and answered it
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
        assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.connection_lost


async def test_the_agent_hanging_up_sends_bye(ingress: Ingress) -> None:
    sipp_call = asyncio.create_task(sipp(ingress, scenario="agent_hangup.xml"))
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)), timeout=20)
    call_id = of(ingress, events.CallAnswered)[0].call_id
    await ingress.bus.publish(make(events.HangUp(after_playout=False), tenant_id="tenant-a", call_id=call_id))
    rc, errors = await sipp_call
    assert rc == 0, errors  # SIPp got the BYE and answered it
    assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.agent_hangup
    await ingress.bus.wait_for(lambda: not ingress.service.sip.uas.dialogs)  # the BYE's 200 closed the dialog


async def test_a_hold_reinvite_is_answered_recvonly(ingress: Ingress) -> None:
    rc, errors = await sipp(ingress, scenario="hold.xml")
    assert rc == 0, errors  # the scenario checks the answer's a=recvonly
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.caller_hangup


async def test_rfc4733_digits_from_sipp_captures_reach_the_bus(ingress: Ingress) -> None:
    rc, errors = await sipp(ingress, scenario="dtmf.xml")
    assert rc == 0, errors
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    assert [e.data.digit for e in of(ingress, events.DtmfReceived)] == ["1", "5", "#"]


# ---------------------------------------------------------------- out-of-dialog requests and garbage
def _options(port: int, branch: str) -> bytes:
    return (f"OPTIONS sip:{NUMBER}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch={branch};rport\r\n"
            "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def _exchange(port: int, data: bytes, *, expect_reply: bool = True) -> bytes | None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        await loop.sock_sendto(s, data, ("127.0.0.1", port))
        try:
            return await asyncio.wait_for(loop.sock_recv(s, 65536), 2.0 if expect_reply else 0.3)
        except TimeoutError:
            return None


async def test_options_gets_200_and_garbage_does_not_stop_the_listener(ingress: Ingress) -> None:
    port = ingress.service.sip.udp_port
    reply = await _exchange(port, _options(port, "z9hG4bK-o1"))
    assert reply is not None and reply.startswith(b"SIP/2.0 200 OK") and b"Allow: INVITE" in reply
    garbage = [b"\x00" * 100, b"INVITE\r\n\r\n", b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKg"
               b"\r\nContent-Length: 5\r\n\r\n", struct.pack("!BBHII", 0x80, 0, 1, 1, 1), b"x" * 60000]
    for g in garbage:
        reply = await _exchange(port, g, expect_reply=False)
        assert reply is None or reply.startswith(b"SIP/2.0 400")
    rc, errors = await sipp(ingress, "-sn", "uac")  # still taking calls
    assert rc == 0, errors


def hostile_messages(port: int, n: int, seed: int = 7) -> list[bytes]:
    """Malformed and hostile SIP: truncated, oversized, wrong Content-Length, bad headers, bytes of noise."""
    import random

    r = random.Random(seed)
    good = _options(port, "z9hG4bK-fz")
    invite = (f"INVITE sip:{NUMBER}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-{{b}}\r\n"
              "From: <sip:scanner@127.0.0.1>;tag=s\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: {b}\r\nCSeq: 1 INVITE\r\n"
              "User-Agent: friendly-scanner\r\nContent-Type: application/sdp\r\nContent-Length: {cl}\r\n\r\n{body}")
    out = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            out.append(good[: r.randrange(1, len(good))])  # truncated
        elif kind == 1:
            out.append(good.replace(b"CSeq: 1 OPTIONS", b"CSeq: x" * r.randrange(1, 50)))
        elif kind == 2:
            out.append(invite.format(b=i, cl=999, body="v=0\r\n").encode())  # wrong Content-Length
        elif kind == 3:
            out.append(invite.format(b=i, cl=5, body="m=audio 1 RTP/AVP 0\r\n" * 300).encode())  # oversized SDP
        elif kind == 4:
            out.append(bytes(r.getrandbits(8) for _ in range(r.randrange(1, 400))))
        elif kind == 5:
            out.append(good.replace(b"Via:", b"Via: \xff\xfe" + b";" * 100))
        elif kind == 6:
            out.append(b"BYE sip:x@y SIP/2.0\r\n" + b"X-Flood: " + b"a" * 9000 + b"\r\n\r\n")
        else:
            out.append(invite.format(b=i, cl=2, body="v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 0 RTP/AVP 18\r\n").encode())
    return out


async def test_a_flood_of_hostile_messages_leaves_a_live_call_untouched(ingress: Ingress) -> None:
    port = ingress.service.sip.udp_port
    async with RtpPeer() as peer:
        sipp_call = asyncio.create_task(sipp(ingress, scenario="agent_audio.xml", keys={"rtp_port": str(peer.port)},
                                             hold_ms=4000))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)), timeout=20)
        call_id = of(ingress, events.CallAnswered)[0].call_id
        await ingress.send_agent_audio(call_id, agent_frames(call_id, tone(440, 2.0)))
        loop = asyncio.get_running_loop()
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]  # four scanner addresses
        try:
            for i, data in enumerate(hostile_messages(port, 3000)):
                s = senders[i % len(senders)]
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    await loop.sock_sendto(s, data, ("127.0.0.1", port))
                if i % 100 == 0:
                    await asyncio.sleep(0.01)
        finally:
            for s in senders:
                s.close()
        rc, errors = await sipp_call
        assert rc == 0, errors  # the call's own signalling went through
    seq = [p.seq for p, _ in peer.received]
    assert len(seq) >= 100 and all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seq))  # no packet missing
    assert 95 <= loud(peer) <= 105  # every frame of the agent's two seconds reached the caller
    assert of(ingress, events.CallStarted)[0].call_id == call_id and len(of(ingress, events.CallStarted)) == 1
    assert ingress.service.sip.uas.refused > 0 and not ingress.service.sip.uas.dialogs
