"""A browser call end to end: control-api → NATS → ingress (WebRTC) → media → stt → brain → tts, and back.

A Python aiortc peer plays the browser; it talks only to control-api (the offer goes in, the answer comes back) and
then exchanges Opus audio with ingress. The greeting it receives is transcribed with the platform's STT model and must
be the agent's first message; a spoken question gets a spoken reply; hanging up through the API ends the call, which
then shows in the calls API with both speakers' text and its end reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import soxr
from pydantic import SecretStr
from voice_control_api.service import ControlApiService
from voice_devstack.speech import caller_voice
from voice_runtime.bus import Bus
from voice_schemas.audio import SAMPLE_RATE

from bench.twilio_caller import pcm16_to_ulaw8k

from ..control_api.conftest import make_settings
from ..ingress.webrtc_peer import BrowserPeer
from .conftest import CALL_TOKEN_KEY, Platform, poll, transcribe, words
from .rest_call import BOOTSTRAP_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FIRST_MESSAGE = "Hello, thanks for calling the bakery. How can I help?"
QUESTION = "What time do you open tomorrow morning?"


@pytest.fixture(scope="module")
async def control_api(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """control-api in this process on the platform's NATS and database, with the platform's CALL_TOKEN_KEY (its
    bootstrap key is the other e2e control-api's: the same value rotates nothing)."""
    settings = make_settings(
        platform.database_url,
        platform.nats_url,
        bootstrap_admin_key=SecretStr(BOOTSTRAP_KEY),
        call_token_key=SecretStr(CALL_TOKEN_KEY),
    )
    service = ControlApiService(settings)
    app = service.app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test", timeout=30) as http:
            yield http


async def _agent(http: httpx.AsyncClient) -> tuple[dict[str, str], dict[str, Any]]:
    r = await http.post(
        "/v1/tenants", json={"name": "Web bakery"}, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    )
    assert r.status_code == 201, r.text
    admin = {"Authorization": f"Bearer {r.json()['admin_api_key']}"}
    r = await http.post(
        "/v1/agents",
        headers=admin,
        json={
            "name": "Bakery desk",
            "system_prompt": "You are a friendly receptionist at a bakery. Answer in one or two short sentences.",
            "first_message": FIRST_MESSAGE,
            "llm": {"temperature": 0.2, "max_tokens": 60},
        },
    )
    assert r.status_code == 201, r.text
    agent = r.json()

    async def deployed() -> bool:
        got = await http.get(f"/v1/agents/{agent['id']}/deployment", headers=admin)
        return got.status_code == 200 and bool(got.json()["in_sync"])

    assert await poll(deployed, 15), "control-api did not write the agent to KV"
    return admin, agent


def _speech(text: str) -> bytes:
    """Caller speech made with piper, as PCM16 16 kHz (what the peer's microphone sends)."""
    voice = caller_voice()
    pcm = soxr.resample(voice.int16(text), voice.sample_rate, SAMPLE_RATE)
    return np.asarray(pcm, dtype=np.int16).tobytes()


def _transcribe(pcm16k: bytes) -> str:
    return transcribe(pcm16_to_ulaw8k(pcm16k, SAMPLE_RATE))


async def test_a_browser_call_greets_answers_and_is_recorded(
    platform: Platform, platform_bus: Bus, control_api: httpx.AsyncClient
) -> None:
    http = control_api
    admin, agent = await _agent(http)
    question = _speech(QUESTION)
    peer = BrowserPeer()
    try:
        r = await http.post(f"/v1/agents/{agent['id']}/web-calls", json=await peer.offer(), headers=admin)
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]
        await peer.accept(r.json()["sdp"])
        await peer.wait_connected()

        # 1. the greeting: heard by the browser, and it is the agent's first message
        assert await peer.wait_for_audio(0, 30) is not None, f"no greeting audio\n{platform.log('ingress')[-2000:]}"
        assert await peer.wait_for_silence(0.8, 30) is not None
        greeting = _transcribe(peer.audio())
        expected = words(FIRST_MESSAGE)
        assert len(words(greeting) & expected) >= len(expected) // 2, greeting

        # 2. a spoken question gets a spoken reply
        peer.say(question)
        await asyncio.wait_for(peer.mic.spoken.wait(), 30)
        spoken_at = time.monotonic()
        assert await peer.wait_for_audio(spoken_at, 40) is not None, "no reply to the question"
        await peer.wait_for_silence(1.0, 40)

        # 3. hanging up through the API ends the call; ingress closes the browser's connection
        r = await http.delete(f"/v1/web-calls/{call_id}", headers=admin)
        assert r.status_code == 204, r.text
        await asyncio.wait_for(peer.ended.wait(), 20)
    finally:
        await peer.close()

    # 4. a normal call in the calls API: channel, end reason, both speakers' text
    async def recorded() -> dict[str, Any] | None:
        got = await http.get(f"/v1/calls/{call_id}", headers=admin)
        if got.status_code != 200:
            return None
        call: dict[str, Any] = got.json()
        speakers = [t["speaker"] for t in call["turns"]]
        return call if call["end_reason"] and "caller" in speakers and speakers.count("agent") >= 2 else None

    call = await poll(recorded, 30)
    assert call, f"the call was not recorded with both speakers\n{platform.log('analytics')[-2000:]}"
    assert call["channel"] == "webrtc" and call["agent_id"] == agent["id"] and call["status"] == "ended"
    assert call["end_reason"] == "caller_hangup" and call["duration_s"] > 0
    agent_turns = [t["text"] for t in call["turns"] if t["speaker"] == "agent"]
    assert agent_turns[0] == FIRST_MESSAGE
    caller_turns = [t["text"] for t in call["turns"] if t["speaker"] == "caller"]
    assert words(caller_turns[0]) & {"open", "tomorrow", "morning", "time"}, caller_turns
