"""A phone caller as Twilio would be one: signed webhook, Media Streams over a real WebSocket.

Sends 20 ms μ-law frames at real-time pace (speech, else silence), plays received agent audio on a
virtual clock, echoes marks when the audio before them has "played", honours `clear`. Records the
timings the tests and the benchmark need. Used by the e2e tests and by `make bench`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import urllib.parse
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import soxr
import websockets
from twilio.request_validator import RequestValidator

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_S = 0.02
SILENCE = b"\xff" * 160


def pcm16_to_ulaw8k(pcm: bytes, rate: int) -> bytes:
    x = np.frombuffer(pcm, dtype=np.int16)
    if rate != 8000:
        x = soxr.resample(x, rate, 8000).astype(np.int16)
    return audioop.lin2ulaw(x.tobytes(), 2)


def ulaw8k_to_pcm16(ulaw: bytes, rate: int = 16000) -> np.ndarray:
    x = np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype=np.int16)
    return soxr.resample(x, 8000, rate).astype(np.int16) if rate != 8000 else x


@dataclass
class Received:
    at: float
    payload: bytes


@dataclass
class PlayedFrame:
    """One received frame on the caller's playout clock: it starts playing when it arrives or when the audio
    queued ahead of it has played, whichever is later. A `clear` discards what has not played yet (Twilio
    drops buffered audio): ``cleared_at`` is then set, and the frame plays nothing (``dropped``) or stops early."""

    frame: Received
    start: float
    end: float  # when it stops playing: start + its duration, or the `clear` that cut it (dropped: == start)
    cleared_at: float | None = None

    @property
    def dropped(self) -> bool:
        """Discarded by a `clear` before it began to play: the caller never heard any of it."""
        return self.cleared_at is not None and self.cleared_at <= self.start


class PlayoutClock:
    """The caller's virtual playout of agent audio (μ-law 8 kHz, so bytes / 8000 = seconds): frames play back to
    back in arrival order, never before they arrive; `clear` empties the queue at once. The live caller and the
    offline analysis (``replay``) share it, so both see the same clock."""

    def __init__(self) -> None:
        self.play_until = 0.0  # when the audio queued so far has played
        self.frames: list[PlayedFrame] = []

    def media(self, frame: Received) -> PlayedFrame:
        start = max(self.play_until, frame.at)
        self.play_until = start + len(frame.payload) / 8000
        played = PlayedFrame(frame, start, self.play_until)
        self.frames.append(played)
        return played

    def clear(self, at: float) -> list[PlayedFrame]:
        """Drop what has not played by ``at`` (and cut the frame playing then); returns the frames affected."""
        hit: list[PlayedFrame] = []
        for p in reversed(self.frames):
            if p.end <= at or p.cleared_at is not None:
                break
            p.cleared_at = at
            p.end = at if p.start < at else p.start  # cut short, or dropped (never played: end == start)
            hit.append(p)
        self.play_until = at
        return hit[::-1]


def replay(received: list[Received], clears: list[float]) -> list[PlayedFrame]:
    """The caller's playout clock run again over a call's received frames and `clear` times (a `clear` that
    arrived at the same instant as a frame is taken to come after it)."""
    clock = PlayoutClock()
    pending = sorted(clears)
    i = 0
    for r in received:
        while i < len(pending) and pending[i] < r.at:
            clock.clear(pending[i])
            i += 1
        clock.media(r)
    for at in pending[i:]:
        clock.clear(at)
    return clock.frames


@dataclass
class CallTimings:
    stream_started: float = 0.0
    greeting_first_audio: float | None = None
    speech_ended: list[float] = field(default_factory=list)  # last speech frame sent, per utterance
    speech_started: list[float] = field(default_factory=list)
    first_audio_after: list[float | None] = field(default_factory=list)  # per utterance
    clears: list[float] = field(default_factory=list)
    speech_ended_wall: list[float] = field(default_factory=list)  # the same instants, epoch seconds
    send_lag_max_s: float | None = None  # worst lateness of our own 20 ms frame clock; None: nothing sent


class TwilioCaller:
    def __init__(self, base_url: str, *, auth_token: str | None = None, public_base_url: str | None = None,
                 to: str = "+15550100", from_: str = "+15550199", http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # webhooks go through ``http`` when given (one client for many callers: building one loads the CA bundle,
        # ~10-20 ms of CPU, which a load generator dialling 100 calls would spend on its real-time loop)
        self.http = http
        self.public = (public_base_url or base_url).rstrip("/")
        self.token = auth_token
        self.to, self.from_ = to, from_
        self.call_sid = "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_id: str | None = None
        self.twiml = ""
        self.received: list[Received] = []
        self.marks_echoed: list[str] = []
        self.timings = CallTimings()
        self._ws: Any = None
        self._speech: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.playout = PlayoutClock()  # virtual playout clock of received audio
        self._pending_marks: list[tuple[float, str]] = []
        self._speaking = False
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self._last_speech_sent = (0.0, 0.0)  # (monotonic, wall) of the latest speech frame sent
        self._utterance_done = asyncio.Condition()

    # ------------------------------------------------------------ webhook
    def sign(self, url: str, params: dict[str, str]) -> dict[str, str]:
        if not self.token:
            return {}
        return {"X-Twilio-Signature": RequestValidator(self.token).compute_signature(url, params)}

    async def dial(self) -> str:
        params = {"CallSid": self.call_sid, "AccountSid": "AC" + "0" * 32, "From": self.from_, "To": self.to,
                  "CallStatus": "ringing", "Direction": "inbound"}
        r = await self._post("/twilio/voice", params)
        r.raise_for_status()
        self.twiml = r.text
        m = re.search(r'name="call_id" value="([^"]+)"', r.text)
        if not m:
            raise RuntimeError(f"no stream in TwiML: {r.text}")
        self.call_id = m.group(1)
        return self.call_id

    async def status_callback(self, status: str = "completed") -> int:
        params = {"CallSid": self.call_sid, "CallStatus": status}
        r = await self._post("/twilio/status", params)
        return r.status_code

    async def _post(self, path: str, params: dict[str, str]) -> httpx.Response:
        headers = self.sign(self.public + path, params)
        if self.http is not None:
            return await self.http.post(self.base_url + path, data=params, headers=headers, timeout=10)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(self.base_url + path, data=params, headers=headers)

    # ------------------------------------------------------------ media stream
    async def connect(self, query: str = "") -> None:
        """Open the media stream (``query``: that of the TwiML's stream URL, e.g. an outbound call's call id)."""
        suffix = f"/twilio/media?{query}" if query else "/twilio/media"
        ws_url = self.base_url.replace("http", "ws", 1) + suffix
        public_ws = "wss://" + urllib.parse.urlsplit(self.public).netloc + suffix
        self._ws = await websockets.connect(ws_url, additional_headers=self.sign(public_ws, {}), max_size=2**20)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.timings.stream_started = time.monotonic()
        await self._send({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC" + "0" * 32,
                      "tracks": ["inbound"], "customParameters": {"call_id": self.call_id},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._recv_loop())]

    async def _send(self, obj: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(obj))

    async def send_raw(self, text: str) -> None:
        await self._ws.send(text)

    def say(self, ulaw8k: bytes) -> None:
        """Queue speech; it goes out in 20 ms frames in place of silence."""
        for i in range(0, len(ulaw8k), 160):
            chunk = ulaw8k[i:i + 160]
            self._speech.put_nowait(chunk + SILENCE[: 160 - len(chunk)])
        self._speech.put_nowait(b"")  # end-of-utterance marker

    async def _send_loop(self) -> None:
        seq, chunk_no = 1, 0
        t0 = time.monotonic()
        try:
            while not self._closed.is_set():
                speech = False
                try:
                    payload = self._speech.get_nowait()
                    if payload == b"":
                        self._speaking = False
                        # the utterance ended with the last speech frame sent, one tick ago
                        mono, wall = self._last_speech_sent
                        self.timings.speech_ended.append(mono)
                        self.timings.speech_ended_wall.append(wall)
                        self.timings.first_audio_after.append(None)
                        await self._notify_utterance_done()
                        payload = SILENCE
                    else:
                        speech = True
                        if not self._speaking:
                            self._speaking = True
                            self.timings.speech_started.append(time.monotonic())
                except asyncio.QueueEmpty:
                    payload = SILENCE
                lag, worst = time.monotonic() - (t0 + chunk_no * FRAME_S), self.timings.send_lag_max_s
                self.timings.send_lag_max_s = lag if worst is None else max(worst, lag)
                seq += 1
                chunk_no += 1
                await self._send({"event": "media", "sequenceNumber": str(seq), "streamSid": self.stream_sid,
                                  "media": {"track": "inbound", "chunk": str(chunk_no),
                                            "timestamp": str(chunk_no * 20),
                                            "payload": base64.b64encode(payload).decode()}})
                if speech:
                    self._last_speech_sent = (time.monotonic(), time.time())
                self._echo_due_marks()
                delay = t0 + chunk_no * FRAME_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass

    async def _notify_utterance_done(self) -> None:
        async with self._utterance_done:
            self._utterance_done.notify_all()

    async def speak(self, ulaw8k: bytes, timeout: float = 60.0) -> tuple[float, float]:
        """Say an utterance and wait until its last frame went out: (first, last) speech frame times."""
        n = len(self.timings.speech_ended)
        self.say(ulaw8k)
        async with self._utterance_done:
            await asyncio.wait_for(self._utterance_done.wait_for(lambda: len(self.timings.speech_ended) > n
                                                                 or self._closed.is_set()), timeout)
        if len(self.timings.speech_ended) <= n:
            raise ConnectionError("the media stream closed while speaking")
        return self.timings.speech_started[n], self.timings.speech_ended[n]

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def agent_audible(self, at: float | None = None, slack_s: float = 0.1) -> bool:
        """Is agent audio playing at ``at`` (default now) on the caller's virtual playout clock?"""
        now = time.monotonic() if at is None else at
        return self.playout.play_until + slack_s >= now and bool(self.received)

    def agent_heard_run(self, at: float | None = None) -> tuple[float, float]:
        """(seconds the agent's audio has played without a break up to ``at`` (default now), seconds of it still
        queued after ``at``) on the caller's playout clock; (0, 0) when none is playing at ``at``."""
        now = time.monotonic() if at is None else at
        end = self.playout.play_until  # a `clear` moves it back to when it came
        if end <= now:
            return 0.0, 0.0
        start = end
        for p in reversed(self.playout.frames):
            if p.end <= p.start:  # dropped by a `clear`: never played
                continue
            if p.end < start - 0.001:  # a break before the audio now playing
                break
            start = p.start
        return max(0.0, now - start), end - now

    def _echo_due_marks(self) -> None:
        now = time.monotonic()
        while self._pending_marks and self._pending_marks[0][0] <= now:
            _, name = self._pending_marks.pop(0)
            self.marks_echoed.append(name)
            asyncio.get_running_loop().create_task(self._safe_send(
                {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}))

    async def _safe_send(self, obj: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._send(obj)

    async def _recv_loop(self) -> None:
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                now = time.monotonic()
                ev = msg.get("event")
                if ev == "media":
                    payload = base64.b64decode(msg["media"]["payload"])
                    frame = Received(now, payload)
                    self.received.append(frame)
                    if self.timings.greeting_first_audio is None:
                        self.timings.greeting_first_audio = now
                    if self.timings.first_audio_after and self.timings.first_audio_after[-1] is None \
                            and now > self.timings.speech_ended[-1]:
                        self.timings.first_audio_after[-1] = now
                    self.playout.media(frame)
                elif ev == "mark":
                    self._pending_marks.append((max(self.playout.play_until, now), msg["mark"]["name"]))
                elif ev == "clear":
                    self.timings.clears.append(now)
                    self.playout.clear(now)
                    for _, name in self._pending_marks:  # Twilio returns marks of cleared audio at once
                        await self._safe_send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
                    self._pending_marks.clear()
                else:
                    raise AssertionError(f"Twilio would reject outbound event {ev!r}")
        except websockets.ConnectionClosed as e:
            self.close_code = e.code
        finally:
            self.close_code = self.close_code or (self._ws.close_code if self._ws else None)
            self._closed.set()
            await self._notify_utterance_done()

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def hangup(self) -> None:
        with contextlib.suppress(Exception):
            await self._send({"event": "stop", "streamSid": self.stream_sid,
                              "stop": {"callSid": self.call_sid, "accountSid": "AC" + "0" * 32}})
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        for t in self._tasks:
            t.cancel()
        await self._notify_utterance_done()
        with contextlib.suppress(Exception):
            await self._ws.close()

    # ------------------------------------------------------------ what the caller heard
    @property
    def frames(self) -> list[bytes]:
        """The agent audio received as 20 ms frames (160 bytes of μ-law), whatever the messages carried (ingress
        sends ``TWILIO_FRAMES_PER_MESSAGE`` frames a message)."""
        return [r.payload[i:i + 160] for r in self.received for i in range(0, len(r.payload), 160)]

    def audio_between(self, start: float, end: float) -> bytes:
        return b"".join(r.payload for r in self.received if start <= r.at <= end)

    def segments(self, gap_s: float = 0.4) -> list[tuple[float, float, bytes]]:
        """Received agent audio split where nothing arrived for gap_s."""
        out: list[tuple[float, float, bytes]] = []
        cur: list[Received] = []
        for r in self.received:
            if cur and r.at - cur[-1].at > gap_s:
                out.append((cur[0].at, cur[-1].at, b"".join(x.payload for x in cur)))
                cur = []
            cur.append(r)
        if cur:
            out.append((cur[0].at, cur[-1].at, b"".join(x.payload for x in cur)))
        return out

    async def wait_for_audio(self, after: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.received:
                if r.at > after:
                    return r.at
            await asyncio.sleep(0.02)
        return None

    async def wait_for_silence(self, quiet_s: float, timeout: float) -> float | None:
        """Wait until no agent audio arrived for quiet_s; returns the last audio time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.received[-1].at if self.received else 0.0
            if time.monotonic() - last >= quiet_s:
                return last
            await asyncio.sleep(0.05)
        return None
