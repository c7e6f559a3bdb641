"""A SIP caller for end-to-end tests and the bench's SIP phase: a minimal UAC over UDP (INVITE, ACK, BYE) with its
own RTP end.

SIPp plays a pcap's RTP from its own media port and records nothing, so a test that must hear the agent uses this
caller instead: it sends the caller's speech as μ-law RTP at 20 ms pace (silence between utterances, as a phone
does) from the port its SDP names, and keeps every packet it receives with its arrival time. SIPp stays the
caller of the protocol tests (tests/ingress/test_sip.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time

import numpy as np
from sipmessage import Message, Response
from voice_ingress import g711, rtp, sdp

FRAME_S = 0.02
LOUD = 500  # mean |sample| of a 20 ms packet that carries speech


class SipCaller:
    def __init__(self, host: str, port: int, to: str, *, from_number: str = "+15550199") -> None:
        self.server = (host, port)
        self.to, self.from_number = to, from_number
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.sip.setblocking(False)
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind(("127.0.0.1", 0))
        self.media.setblocking(False)
        self.call_id = f"e2e-{random.getrandbits(48):x}@127.0.0.1"
        self.tag = f"{random.getrandbits(32):x}"
        self.remote_tag = ""
        self.remote_rtp: tuple[str, int] | None = None
        self.received: list[tuple[float, bytes]] = []  # (arrival time, μ-law payload)
        self._speech: list[bytes] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._responses: asyncio.Queue[Response] = asyncio.Queue()
        self.requests: list[Message] = []
        self.speech_ended_at: float | None = None  # when the last queued speech packet went out
        self.speech_sent = asyncio.Event()  # set then

    # ------------------------------------------------------------ signalling
    def _headers(self, method: str, cseq: int, branch: str) -> str:
        me = self.sip.getsockname()
        to = f"<sip:{self.to}@{self.server[0]}:{self.server[1]}>" + (f";tag={self.remote_tag}" if self.remote_tag
                                                                    else "")
        return (f"{method} sip:{self.to}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bK{branch};rport\r\n"
                f"From: <sip:{self.from_number}@{me[0]}>;tag={self.tag}\r\nTo: {to}\r\n"
                f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@{me[0]}:{me[1]}>\r\n"
                "Max-Forwards: 70\r\n")

    async def _send(self, data: str) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sip, data.encode(), self.server)

    async def _read_sip(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, _ = await loop.sock_recvfrom(self.sip, 65536)
            msg = Message.parse(data)
            if isinstance(msg, Response):
                self._responses.put_nowait(msg)
            else:  # a BYE from the platform: answer it
                self.requests.append(msg)
                reply = (f"SIP/2.0 200 OK\r\nVia: {msg.headers['Via']}\r\nFrom: {msg.headers['From']}\r\n"
                         f"To: {msg.headers['To']}\r\nCall-ID: {msg.call_id}\r\nCSeq: {msg.headers['CSeq']}\r\n"
                         "Content-Length: 0\r\n\r\n")
                await self._send(reply)

    async def _final(self, method: str, timeout: float) -> Response:
        deadline = time.monotonic() + timeout
        while True:
            r = await asyncio.wait_for(self._responses.get(), max(0.01, deadline - time.monotonic()))
            if r.cseq.method == method and r.code >= 200:
                return r

    async def dial(self, timeout: float = 30) -> Response:
        """INVITE with a PCMU offer; returns the final response (ACKed when it is a 200)."""
        self._tasks.append(asyncio.create_task(self._read_sip()))
        port = self.media.getsockname()[1]
        body = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
                "a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n")
        await self._send(self._headers("INVITE", 1, "inv1") + "Content-Type: application/sdp\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n{body}")
        final = await self._final("INVITE", timeout)
        if final.code != 200:
            return final
        self.remote_tag = str(final.to_address.parameters.get("tag") or "")
        await self._send(self._headers("ACK", 1, "ack1") + "Content-Length: 0\r\n\r\n")
        answer = sdp.negotiate(sdp.parse(final.body), address="127.0.0.1", port=port)
        self.remote_rtp = (answer.remote_host, answer.remote_port)
        self._tasks.append(asyncio.create_task(self._read_rtp()))
        self._tasks.append(asyncio.create_task(self._send_rtp()))
        return final

    async def hangup(self, timeout: float = 10) -> int | None:
        """BYE; the code of its final response (None: none came)."""
        try:
            await self._send(self._headers("BYE", 2, "bye1") + "Content-Length: 0\r\n\r\n")
            return (await self._final("BYE", timeout)).code
        except TimeoutError:
            return None
        finally:
            for t in self._tasks:
                t.cancel()
            # the loop unregisters a socket's reader when its cancelled task finishes: only then may it close
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.sip.close()
            self.media.close()

    # ------------------------------------------------------------ media
    def say(self, ulaw: bytes) -> None:
        """Queue speech (8 kHz μ-law) to be sent from the next 20 ms tick on."""
        self.speech_sent.clear()
        self._speech += [ulaw[i:i + 160].ljust(160, b"\xff") for i in range(0, len(ulaw), 160)]

    async def _send_rtp(self) -> None:
        assert self.remote_rtp is not None
        loop = asyncio.get_running_loop()
        sender = rtp.RtpSender(0)
        start, n = loop.time(), 0
        while True:
            speech = bool(self._speech)
            payload = self._speech.pop(0) if speech else b"\xff" * 160
            with contextlib.suppress(OSError):
                self.media.sendto(sender.packet(payload), self.remote_rtp)
            if speech and not self._speech:
                self.speech_ended_at = time.monotonic()
                self.speech_sent.set()
            sender.tick()
            n += 1
            await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))

    async def _read_rtp(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, _ = await loop.sock_recvfrom(self.media, 2048)
            with contextlib.suppress(rtp.RtpError):
                p = rtp.parse(data)
                if p.payload_type == 0:
                    self.received.append((time.monotonic(), p.payload))

    @property
    def speaking(self) -> bool:
        return bool(self._speech)

    def loud_since(self, since: float) -> list[float]:
        return [t for t, p in self.received if t >= since and np.abs(g711.decode(p, "ulaw")).mean() > LOUD]

    async def wait_for_audio(self, since: float, timeout: float) -> float | None:
        """When the agent's audio was first heard after ``since`` (None: not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud_since(since)
            if loud:
                return loud[0]
            await asyncio.sleep(0.05)
        return None

    async def wait_for_silence(self, quiet_s: float, timeout: float) -> None:
        """Until the agent has been quiet for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud_since(0)
            if loud and time.monotonic() - loud[-1] >= quiet_s:
                return
            await asyncio.sleep(0.05)

    def audio_between(self, t0: float, t1: float) -> bytes:
        return b"".join(p for t, p in self.received if t0 <= t <= t1)
