"""An outbound call placed through control-api's REST API with every service running: control-api checks the
tenant's outbound allow-list and asks ingress (over NATS) to dial; ingress creates the call through Twilio's REST API
(the REST double on the port the platform's ingress was given), with TwiML that connects the media stream back and
status callbacks; the callee (the Twilio-style caller on the real WebSocket) hears the agent's greeting, and the
call is stored with its turns. A second call reaches a busy line and is stored as ended ``busy``."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from bench.twilio_caller import TwilioCaller

from ..conftest import free_port
from ..doubles.twilio_rest import TwilioRestDouble
from .conftest import PUBLIC, TWILIO_ACCOUNT, TWILIO_TOKEN, Platform, poll, transcribe, words
from .rest_call import BOOTSTRAP_KEY, ControlApi


def ordinary_number() -> str:
    """A random number of an ordinary kind: exchange 204 of area code 628 (an exchange of 0xx or 1xx, which a
    random seven digits give one time in nine, is no valid number, and the outbound rules refuse it)."""
    return "+1628204" + str(secrets.randbelow(10_000)).zfill(4)


pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

GREETING = "Hello, this is the dental practice calling about your appointment tomorrow."


@pytest.fixture
async def twilio(platform: Platform) -> AsyncIterator[TwilioRestDouble]:
    double = TwilioRestDouble(account_sid=TWILIO_ACCOUNT, auth_token=TWILIO_TOKEN, port=platform.twilio_api_port)
    async with double.running():
        yield double


async def _tenant(http: httpx.AsyncClient) -> tuple[dict[str, str], dict[str, Any], str]:
    r = await http.post("/v1/tenants", json={"name": "Dental practice"},
                        headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})
    assert r.status_code == 201, r.text
    tenant = r.json()
    admin = {"Authorization": f"Bearer {tenant['admin_api_key']}"}
    r = await http.post("/v1/agents", headers=admin, json={
        "name": "Reminders", "first_message": GREETING, "llm": {"temperature": 0.2, "max_tokens": 40},
        "system_prompt": "You call patients of a dental practice to remind them of appointments. Be brief.",
    })
    assert r.status_code == 201, r.text
    agent = r.json()
    number = "+1415" + str(secrets.randbelow(9_000_000) + 1_000_000)
    r = await http.post("/v1/phone-numbers", json={"number": number, "agent_id": agent["id"]}, headers=admin)
    assert r.status_code == 201, r.text
    r = await http.put(f"/v1/tenants/{tenant['id']}/outbound-allow-list", json={"patterns": ["+1628*"]},
                       headers=admin)
    assert r.status_code == 200, r.text

    async def deployed() -> bool:
        r = await http.get(f"/v1/agents/{agent['id']}/deployment", headers=admin)
        return r.status_code == 200 and bool(r.json()["in_sync"])

    assert await poll(deployed, 15), "control-api did not write the agent to KV"
    return admin, agent, number


async def _stored(platform: Platform, call_id: str, **want: Any) -> asyncpg.Record | None:
    conn = await asyncpg.connect(platform.database_url)
    try:
        async def row() -> asyncpg.Record | None:
            r = await conn.fetchrow("SELECT * FROM calls WHERE id = $1 AND status = 'ended'", call_id)
            return r if r is not None and all(r[k] == v for k, v in want.items()) else None

        return await poll(row, 30)
    finally:
        await conn.close()


async def test_an_api_call_over_twilio_greets_the_callee_and_a_busy_line_ends_busy(
    platform: Platform, control_api: ControlApi, twilio: TwilioRestDouble
) -> None:
    callee_number = ordinary_number()
    async with httpx.AsyncClient(base_url=control_api.url, timeout=15) as http:
        admin, agent, number = await _tenant(http)
        r = await http.post("/v1/calls", json={"agent_id": agent["id"], "to": "+1 900 555 1234"}, headers=admin)
        assert r.status_code == 403, r.text  # premium-rate: refused whatever the list says
        r = await http.post("/v1/calls", json={"agent_id": agent["id"], "to": callee_number}, headers=admin)
        assert r.status_code == 202, r.text
        call_id = r.json()["call_id"]

    assert await poll(lambda: _true(bool(twilio.status_callbacks)), 10), "ingress did not create the Twilio call"
    [create] = twilio.creates()
    assert create.auth == (TWILIO_ACCOUNT, TWILIO_TOKEN)
    assert (create.param("To"), create.param("From")) == (callee_number, number)
    twiml = create.param("Twiml") or ""
    assert f'<Connect><Stream url="wss://voice.example.test/twilio/media?call_id={call_id}">' in twiml
    assert re.findall(r'name="call_id" value="([^"]+)"', twiml) == [call_id]
    sid = next(iter(twilio.status_callbacks))
    assert await twilio.call_back(sid, "ringing", public=PUBLIC, real=platform.ingress) == 204

    # Twilio runs the TwiML once the callee answers: the media stream connects, then the in-progress callback
    callee = TwilioCaller(platform.ingress, auth_token=TWILIO_TOKEN, public_base_url=PUBLIC)
    callee.call_sid, callee.call_id = sid, call_id
    await callee.connect(f"call_id={call_id}")  # the stream URL as the TwiML gives it
    try:
        assert await twilio.call_back(sid, "in-progress", public=PUBLIC, real=platform.ingress) == 204
        assert await callee.wait_for_audio(0, 60), "the callee heard no greeting"
        await callee.wait_for_silence(0.8, 40)
        heard = words(transcribe(callee.audio_between(0, time.monotonic())))
        assert len(heard & words(GREETING)) >= len(words(GREETING)) // 2, heard
    finally:
        await callee.hangup()
        await twilio.call_back(sid, "completed", public=PUBLIC, real=platform.ingress)
        await callee.close()
    row = await _stored(platform, call_id)
    assert row is not None, "the outbound call was not stored"
    assert (row["tenant_id"], row["agent_id"], row["channel"], row["to_number"], row["from_number"]) == (
        agent["tenant_id"], agent["id"], "twilio", callee_number, number)

    # a busy line: Twilio's busy callback ends the call, stored with the reason
    async with httpx.AsyncClient(base_url=control_api.url, timeout=15) as http:
        r = await http.post("/v1/calls", json={"agent_id": agent["id"], "to": callee_number}, headers=admin)
        assert r.status_code == 202, r.text
        busy_id = r.json()["call_id"]
    assert await poll(lambda: _true(len(twilio.status_callbacks) == 2), 10)
    busy_sid = list(twilio.status_callbacks)[1]
    assert await twilio.call_back(busy_sid, "busy", public=PUBLIC, real=platform.ingress) == 204
    assert await _stored(platform, busy_id, end_reason="busy") is not None, "the busy call was not stored as busy"


async def test_an_api_call_through_a_sip_trunk_reaches_sipp_as_the_callee(
    platform: Platform, control_api: ControlApi
) -> None:
    """SIPp (``-sn uas``) is the carrier behind the tenant's trunk: the platform's INVITE reaches it, it answers,
    the agent greets (stored as the call's first turn), and ending the call through the API sends it BYE."""
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: `make sip` installs Debian's sip-tester")
    work = tempfile.mkdtemp(prefix="sipp-callee-")
    sipp = await asyncio.create_subprocess_exec(
        "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(platform.sip_callee_port), "-mp", str(free_port()),
        "-m", "1", "-nostdin", "-timeout", "60s", "-timeout_error", cwd=work,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.3)  # SIPp binds its socket
        callee_number = ordinary_number()
        async with httpx.AsyncClient(base_url=control_api.url, timeout=15) as http:
            admin, agent, _ = await _tenant(http)
            r = await http.post("/v1/sip-trunks", headers=admin, json={
                "name": "carrier", "outbound_proxy": f"127.0.0.1:{platform.sip_callee_port}",
                "outbound_caller_id": "+14155550123"})
            assert r.status_code == 201, r.text
            trunk = r.json()
            await asyncio.sleep(0.5)  # ingress reads the trunk from KV
            r = await http.post("/v1/calls", headers=admin, json={
                "agent_id": agent["id"], "to": callee_number, "channel": "sip", "trunk_id": trunk["id"]})
            assert r.status_code == 202, r.text
            call_id = r.json()["call_id"]
            conn = await asyncpg.connect(platform.database_url)
            try:
                async def greeted() -> bool:
                    answered = await conn.fetchval(
                        "SELECT 1 FROM calls WHERE id = $1 AND answered_at IS NOT NULL", call_id)
                    turn = await conn.fetchval(
                        "SELECT text FROM call_turns WHERE call_id = $1 AND speaker = 'agent'", call_id)
                    return bool(answered and turn)

                assert await poll(greeted, 60), "the SIP callee's call was not answered and greeted"
            finally:
                await conn.close()
            r = await http.post(f"/v1/calls/{call_id}/end", headers=admin)
            assert r.status_code == 202, r.text
        assert await asyncio.wait_for(sipp.wait(), 30) == 0, "SIPp's uas scenario failed (no BYE?)"
    finally:
        if sipp.returncode is None:
            sipp.kill()
            await sipp.wait()
        shutil.rmtree(work, ignore_errors=True)
    row = await _stored(platform, call_id)
    assert row is not None, "the outbound SIP call was not stored"
    assert (row["channel"], row["to_number"], row["from_number"], row["end_reason"]) == (
        "sip", callee_number, "+14155550123", "supervisor")


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
