"""The "talk to this agent" page's WebRTC client in a real browser, against the signalling contract served by the
test itself: an aiortc peer answers the page's offer and sends a 440 Hz tone, and the page's own recording of what
it received (``window.receivedAudioWav()``) must hold that tone. This checks the page (offer with its candidates
gathered, the CSRF header, the answer, playout and recording, hang-up) without the data plane; a call through the
platform's web-call endpoint, judged by the platform's STT, is the job of a later test.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import io
import json
import re
import time
import wave
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from playwright.async_api import Page, Request, Route, expect

from ..control_api.helpers import PASSWORD
from .conftest import Tenant, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TONE_HZ = 440.0
CALL_ID = "CAconsoletalktest"


class Tone(MediaStreamTrack):
    """A sine wave in 20 ms frames at 48 kHz, paced in real time."""

    kind = "audio"

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz, self.pts, self.started = hz, 0, 0.0

    async def recv(self) -> av.AudioFrame:
        rate, n = 48_000, 960
        if not self.started:
            self.started = time.monotonic()
        delay = self.started + self.pts / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(n) + self.pts) / rate
        samples = (0.3 * 32767 * np.sin(2 * np.pi * self.hz * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, self.pts, fractions.Fraction(1, rate)
        self.pts += n
        return frame


def dominant_hz(wav_b64: str) -> tuple[float, float, float]:
    """The received recording's strongest frequency, its RMS (full scale 1.0) and its length in seconds."""
    with wave.open(io.BytesIO(base64.b64decode(wav_b64))) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64) / 32768
    blocks = pcm[: len(pcm) // 320 * 320].reshape(-1, 320)  # 20 ms blocks: keep the ones with sound in them
    loud = blocks[np.sqrt(np.mean(blocks**2, axis=1)) > 0.01].reshape(-1)
    if len(loud) < rate // 4:
        return 0.0, float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0, len(pcm) / rate
    spectrum = np.abs(np.fft.rfft(loud * np.hanning(len(loud))))
    freqs = np.fft.rfftfreq(len(loud), 1 / rate)
    return float(freqs[int(np.argmax(spectrum))]), float(np.sqrt(np.mean(loud**2))), len(pcm) / rate


async def test_talk_page_offers_answers_plays_and_records_the_agents_audio(
    page: Page, tenants: dict[str, Tenant]
) -> None:
    t = tenants["A"]
    peers: list[RTCPeerConnection] = []
    offers: list[tuple[dict[str, Any], dict[str, str]]] = []
    hangups: list[str] = []

    async def answer(route: Route, request: Request) -> None:
        offer = json.loads(request.post_data or "{}")
        offers.append((offer, await request.all_headers()))
        pc = RTCPeerConnection()
        peers.append(pc)
        pc.addTrack(Tone(TONE_HZ))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())  # aiortc answers with its candidates gathered
        body = {"call_id": CALL_ID, "sdp": pc.localDescription.sdp, "type": "answer"}
        await route.fulfill(status=201, content_type="application/json", body=json.dumps(body))

    async def hang_up(route: Route, request: Request) -> None:
        hangups.append(f"{request.method} {request.url}")
        await route.fulfill(status=204)

    try:
        await sign_in(page, t.admin_email, PASSWORD)
        await page.route(re.compile(r".*/v1/agents/[^/]+/web-calls$"), answer)
        await page.route(re.compile(r".*/v1/web-calls/[^/]+$"), hang_up)
        await page.goto(f"/agents/{t.ids['agent_admin']}/talk")
        csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
        await page.get_by_role("button", name="Start call").click()
        status = page.locator("#talk-status")
        await expect(status).to_have_attribute("data-state", "connected", timeout=30_000)

        [(offer, headers)] = offers
        assert offer["type"] == "offer" and "m=audio" in offer["sdp"] and "opus" in offer["sdp"].lower()
        assert "a=candidate" in offer["sdp"]  # gathered before it was sent (no trickle)
        assert headers.get("x-csrf-token") == csrf
        await expect(page.locator("#talk-call-link")).to_have_attribute("href", f"/calls/{CALL_ID}")

        deadline = time.monotonic() + 20
        while (await page.evaluate("window.talkState().receivedSeconds")) < 2.5:
            assert time.monotonic() < deadline, "the page recorded too little of what it received"
            await asyncio.sleep(0.2)
        hz, rms, seconds = dominant_hz(await page.evaluate("window.receivedAudioWav()"))
        assert abs(hz - TONE_HZ) < 5, (hz, rms, seconds)
        assert rms > 0.05, rms

        await page.get_by_role("button", name="Hang up").click()
        await expect(status).to_have_attribute("data-state", "ended")
        assert hangups == [f"DELETE {page.url.split('/agents')[0]}/v1/web-calls/{CALL_ID}"]
        state = await page.evaluate("window.talkState()")
        assert state["callId"] == CALL_ID and state["sampleRate"] == 16000
        # the recording outlives the call, for whoever judges it afterwards
        assert dominant_hz(await page.evaluate("window.receivedAudioWav()"))[2] >= 2.5
    finally:
        for pc in peers:
            await pc.close()
