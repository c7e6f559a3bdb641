"""A browser as aiortc sees one: a WebRTC peer that offers audio, speaks PCM it is given and records what it hears.

It offers one sendrecv audio section (Opus), gathers its candidates before the offer is sent (no trickle, as the
platform's signalling expects), and offers a loopback host candidate like the server under test, so a call works on
a machine whose only interface is loopback. What it receives is resampled to PCM16 16 kHz and kept as 20 ms frames
with their arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections import deque
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from voice_ingress.transports.webrtc import CallerResampler, CandidatePolicy
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE, SAMPLES_PER_FRAME

LOUD_RMS = 500.0  # a frame with more energy than this is audio, not silence or codec noise


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def tone(hz: float, seconds: float, amplitude: int = 8000) -> bytes:
    """A sine at ``hz``, PCM16 16 kHz, a whole number of 20 ms frames."""
    n = int(seconds * SAMPLE_RATE) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME
    t = np.arange(n) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes()


def frames_of(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def dominant_hz(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[int(np.argmax(spectrum))])


class Microphone(MediaStreamTrack):
    """The peer's outgoing audio: queued PCM16 16 kHz at real-time pace, silence when there is none."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[bytes] = deque()
        self._start: float | None = None
        self._pts = 0
        self.spoken = asyncio.Event()

    def say(self, pcm: bytes) -> None:
        pad = (-len(pcm)) % FRAME_BYTES
        self.spoken.clear()
        self._queue.extend(frames_of(pcm + bytes(pad)))

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += SAMPLES_PER_FRAME
            wait = self._start + self._pts / SAMPLE_RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        if self._queue:
            pcm = self._queue.popleft()
            if not self._queue:
                self.spoken.set()
        else:
            pcm = bytes(FRAME_BYTES)
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(pcm)
        frame.pts, frame.sample_rate = self._pts, SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


@dataclass
class Heard:
    at: float  # time.monotonic() on arrival
    pcm: bytes  # 20 ms PCM16 16 kHz


class BrowserPeer:
    """One browser-side peer connection: ``offer()`` → the platform's answer → ``accept(answer)``."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = Microphone()
        self.heard: list[Heard] = []
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()  # the connection closed or failed, or the agent's track ended
        self._reader: asyncio.Task[None] | None = None
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()
        elif self.pc.connectionState in ("failed", "closed"):
            self.ended.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = CallerResampler()
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                self.heard.extend(Heard(now, pcm) for pcm in resampler.frames(frame))  # type: ignore[arg-type]
        except MediaStreamError:
            self.ended.set()

    async def offer(self) -> dict[str, str]:
        """The SDP offer with every candidate in it (the peer gathers before it is sent)."""
        CandidatePolicy(loopback=True).apply(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"type": "offer", "sdp": self.pc.localDescription.sdp}

    async def accept(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def wait_connected(self, timeout: float = 20.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def say(self, pcm: bytes) -> None:
        self.mic.say(pcm)

    def loud(self, after: float = 0.0) -> list[Heard]:
        """Received frames with audio in them (not silence), arrived after ``after``."""
        return [h for h in self.heard if h.at > after and rms(h.pcm) > LOUD_RMS]

    def audio(self, start: float = 0.0, end: float = float("inf")) -> bytes:
        return b"".join(h.pcm for h in self.heard if start <= h.at < end)

    async def wait_for_audio(self, after: float, timeout: float) -> float | None:
        """When loud audio arrived after ``after`` (waiting up to ``timeout``), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud(after)
            if loud:
                return loud[0].at
            await asyncio.sleep(0.05)
        return None

    async def wait_for_silence(self, quiet_s: float, timeout: float) -> float | None:
        """When the agent's audio stopped for ``quiet_s`` (waiting up to ``timeout``), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loud = self.loud()
            now = time.monotonic()
            if loud and now - loud[-1].at >= quiet_s:
                return loud[-1].at
            await asyncio.sleep(0.05)
        return None

    async def close(self) -> None:
        self.mic.stop()
        if self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
