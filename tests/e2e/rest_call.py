"""control-api as one more e2e process, and one call configured only through its REST API.

The call is made once per session and shared: ``test_rest_configured_call.py`` checks that the caller hears
the greeting the agent was given over HTTP (control-api → KV → ingress → brain → tts), and
``test_log_privacy.py`` reads every service's log of the same call.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js.errors import KeyNotFoundError

from bench.twilio_caller import TwilioCaller

from ..conftest import free_port
from .conftest import CALL_TOKEN_KEY, PUBLIC, TWILIO_TOKEN, Platform, _wait_ready, poll, speech, transcribe

BOOTSTRAP_KEY = "e2e-bootstrap-" + secrets.token_hex(16)

# distinctive, so that finding any of them in a log line cannot be a coincidence
SYSTEM_PROMPT = (
    "You are Marisol, the night guide of the Harbour Lighthouse Museum in Port Quillan. "
    "Answer visitors in one or two short sentences about the museum."
)
FIRST_MESSAGE = "Good evening, you have reached the lighthouse museum. Ask me about the lantern room."
QUESTION = "When is the lantern room open to visitors?"


@dataclass
class ControlApi:
    url: str
    proc: subprocess.Popen[bytes]


@dataclass
class RestCall:
    """What the REST-configured call was given and what it produced."""

    tenant_id: str
    agent: dict[str, Any]
    number: str  # the number called (created through the API), E.164
    caller_number: str  # the caller's number (Twilio's From), E.164
    call_id: str
    greeting_heard: str  # the agent audio before the caller spoke, transcribed
    turns: list[asyncpg.Record]  # call_turns as analytics stored them: what STT heard and what the agent said


@pytest.fixture(scope="session")
def control_api(platform: Platform) -> Iterator[ControlApi]:
    """``python -m voice_control_api`` on the platform's NATS and database, started like the other services (its
    log joins ``platform.logs``)."""
    port = free_port()
    env = dict(
        os.environ,
        NATS_URL=platform.nats_url,
        DATABASE_URL=platform.database_url,
        HTTP_PORT=str(port),
        BOOTSTRAP_ADMIN_KEY=BOOTSTRAP_KEY,
        CALL_TOKEN_KEY=CALL_TOKEN_KEY,  # browser calls (tests/e2e/test_browser_call.py): ingress verifies the grant
        EGRESS_ALLOW=f"127.0.0.1:{platform.sip_callee_port}",  # a SIP trunk's proxy (tests/e2e/test_outbound_call.py)
        LOG_FORMAT="json",
        SHUTDOWN_GRACE_S="3",
        PYTHONUNBUFFERED="1",
    )
    log_path = platform.logs["ingress"].parent / "control-api.log"
    platform.logs["control-api"] = log_path
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_control_api"], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait_ready(url + "/readyz", proc, 60), f"control-api not ready:\n{platform.log('control-api')[-3000:]}"
        yield ControlApi(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _configure(api: ControlApi, number: str) -> tuple[str, dict[str, Any]]:
    """A tenant, an agent and a phone number, through HTTP only."""
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as http:
        r = await http.post(
            "/v1/tenants", json={"name": "Lighthouse museum"}, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
        )
        assert r.status_code == 201, r.text
        tenant = r.json()
        admin = {"Authorization": f"Bearer {tenant['admin_api_key']}"}
        r = await http.post(
            "/v1/agents",
            headers=admin,
            json={
                "name": "Night guide",
                "system_prompt": SYSTEM_PROMPT,
                "first_message": FIRST_MESSAGE,
                "llm": {"temperature": 0.2, "max_tokens": 60},
            },
        )
        assert r.status_code == 201, r.text
        agent = r.json()
        r = await http.post("/v1/phone-numbers", json={"number": number, "agent_id": agent["id"]}, headers=admin)
        assert r.status_code == 201, r.text

        async def deployed() -> bool:
            r = await http.get(f"/v1/agents/{agent['id']}/deployment", headers=admin)
            return r.status_code == 200 and bool(r.json()["in_sync"])

        assert await poll(deployed, 15), "control-api did not write the agent to KV"
        return str(tenant["id"]), agent


async def _call(platform: Platform, api: ControlApi) -> RestCall:
    number = "+1415" + str(secrets.randbelow(9_000_000) + 1_000_000)
    caller_number = "+1628" + str(secrets.randbelow(9_000_000) + 1_000_000)
    tenant_id, agent = await _configure(api, number)
    question = speech(QUESTION)
    c = TwilioCaller(platform.ingress, auth_token=TWILIO_TOKEN, public_base_url=PUBLIC, to=number, from_=caller_number)
    call_id = await c.dial()
    await c.connect()
    try:
        assert await c.wait_for_audio(0, 30), "no greeting audio"
        await c.wait_for_silence(0.8, 30)
        greeting = transcribe(c.audio_between(0, time.monotonic()))
        c.say(question)
        await asyncio.sleep(len(question) / 8000)
        assert await c.wait_for_audio(time.monotonic() + 0.3, 40), "no reply to the question"
        await c.wait_for_silence(1.0, 40)
    finally:
        await c.hangup()

    conn = await asyncpg.connect(platform.database_url)
    try:

        async def stored() -> list[asyncpg.Record] | None:
            ended = await conn.fetchval("SELECT 1 FROM calls WHERE id = $1 AND status = 'ended'", call_id)
            rows = await conn.fetch("SELECT * FROM call_turns WHERE call_id = $1 ORDER BY id", call_id)
            speakers = [r["speaker"] for r in rows]
            return rows if ended and speakers.count("agent") >= 2 and "caller" in speakers else None

        turns = await poll(stored, 30)
        assert turns, "the call and its turns were not stored"
    finally:
        await conn.close()
    # the call is over everywhere: brain has freed the conversation (what it logs at the end is logged by then)
    nc = await nats.connect(platform.nats_url)
    try:
        history = await nc.jetstream().key_value("history")

        async def freed() -> bool:
            try:
                await history.get(call_id)
            except KeyNotFoundError:
                return True
            return False

        assert await poll(freed, 20), "brain kept the call's history"
    finally:
        await nc.close()
    return RestCall(tenant_id, agent, number, caller_number, call_id, greeting, turns)


@pytest.fixture(scope="session")
async def rest_call(platform: Platform, control_api: ControlApi) -> RestCall:
    return await _call(platform, control_api)
