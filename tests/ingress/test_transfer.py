"""Transfers in ingress: a live Twilio call redirected through Twilio's REST API (the REST test double on a real
port, the Twilio-style caller on a real WebSocket), and every way a transfer fails while the call goes on.

Ingress runs on the in-memory bus here (as the other ingress tests); ``tests/control_api/test_call_control.py``
drives the same path through the API over real NATS and PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from voice_ingress.transports.base import TransferRefused, Transport
from voice_ingress.transports.webrtc import WebRtcCall
from voice_ingress.twilio_rest import TwilioRest, TwilioRestError, dial_twiml
from voice_runtime import calltoken
from voice_schemas import AgentConfig, events, make, subjects
from voice_schemas import chat as rpc
from voice_schemas.chat import ChatAnswer

from bench.twilio_caller import TwilioCaller

from ..doubles.twilio_rest import Fault, Recorded, TwilioRestDouble
from .fakes import Ingress, reply
from .test_twilio_route import PUBLIC, TOKEN, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TARGET = "+493012345678"
ACCOUNT = "AC" + "0" * 32  # the account the Twilio-style caller's `start` names


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioRestDouble]:
    async with TwilioRestDouble(account_sid=ACCOUNT, auth_token=TOKEN).running() as double:
        yield double


@contextlib.asynccontextmanager
async def live_call(double: TwilioRestDouble | None, **settings: Any) -> AsyncIterator[tuple[Ingress, TwilioCaller]]:
    """Ingress with Twilio REST settings pointing at ``double`` (unless overridden), and one answered call that
    Twilio (the double) knows."""
    if double is not None:
        settings = {"twilio_account_sid": double.account_sid, "twilio_api_base_url": double.base_url, **settings}
    async with serving(twilio_auth_token=TOKEN, **settings) as (ingress, url):
        c = TwilioCaller(url, auth_token=TOKEN, public_base_url=PUBLIC)
        if double is not None:
            double.add_call(c.call_sid)
        call_id = await c.dial()
        await c.connect()
        await ingress.bus.wait_for(lambda: ingress.events(events.CallAnswered, call_id=call_id))
        try:
            yield ingress, c
        finally:
            await c.close()


async def transfer(ingress: Ingress, call_id: str, target: str = TARGET, **kw: Any) -> None:
    turn_id = kw.pop("turn_id", None)
    cmd = events.Transfer(target=target, requested_by=kw.pop("requested_by", "supervisor"), **kw)
    await ingress.bus.publish(make(cmd, tenant_id="tenant-a", call_id=call_id, turn_id=turn_id))


def failures(ingress: Ingress, call_id: str) -> list[events.TransferFailed]:
    return [e.data for e in ingress.events(events.TransferFailed, call_id=call_id)]


def ended(ingress: Ingress, call_id: str) -> list[events.CallEnded]:
    return [e.data for e in ingress.events(events.CallEnded, call_id=call_id)]


def stop_the_stream(c: TwilioCaller) -> Any:
    """What Twilio does once it redirects a call: the media stream gets `stop` and closes (here before the REST
    answer, the order that a session must survive)."""

    async def hook(_: Recorded) -> None:
        await c.hangup()
        return None

    return hook


# ---------------------------------------------------------------- the TwiML and the REST client
@pytest.mark.unit
def test_dial_twiml_dials_a_number_or_a_sip_uri_escaped() -> None:
    assert dial_twiml(TARGET).endswith(f"<Response><Dial><Number>{TARGET}</Number></Dial></Response>")
    assert "<Sip>sip:desk&amp;1@pbx.example.com</Sip>" in dial_twiml("sip:desk&1@pbx.example.com")
    for bad in ("0301234", "+49 30 1234", "sip:<x>@y", "</Number><Play>x</Play>"):
        with pytest.raises(ValueError):
            dial_twiml(bad)


async def test_rest_client_speaks_twilios_protocol(twilio: TwilioRestDouble) -> None:
    rest = TwilioRest(twilio.account_sid, SecretStr(TOKEN), base_url=twilio.base_url)
    try:
        sid = twilio.add_call()["sid"]
        updated = await rest.update_call(sid, twiml=dial_twiml(TARGET))
        assert updated["sid"] == sid and updated["status"] == "in-progress"
        [r] = twilio.updates(sid)
        assert r.auth == (twilio.account_sid, TOKEN) and r.param("Twiml") == dial_twiml(TARGET) and r.status == 200
        assert r.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Calls/{sid}.json"
        created = await rest.create_call(to="+14155550100", from_="+15550100", url="https://x.test/twilio/voice",
                                         status_callback="https://x.test/twilio/status",
                                         status_callback_events=("ringing", "answered"))
        assert created["sid"].startswith("CA") and created["status"] == "queued"
        assert created["direction"] == "outbound-api"
        assert twilio.creates()[0].form["StatusCallbackEvent"] == ["ringing", "answered"]
        with pytest.raises(TwilioRestError) as unknown:
            await rest.update_call("CA" + "0" * 32, status="completed")
        assert (unknown.value.status, unknown.value.code) == (404, 20404)
        assert (await rest.update_call(sid, status="completed"))["status"] == "completed"
        with pytest.raises(TwilioRestError) as over:
            await rest.update_call(sid, twiml=dial_twiml(TARGET))
        assert over.value.code == 21220  # an ended call cannot be redirected
    finally:
        await rest.close()
    wrong = TwilioRest(twilio.account_sid, SecretStr("not-the-token"), base_url=twilio.base_url)
    try:
        with pytest.raises(TwilioRestError) as refused:
            await wrong.update_call(sid, status="completed")
        assert (refused.value.status, refused.value.code) == (401, 20003)
    finally:
        await wrong.close()
    async with httpx.AsyncClient(base_url=twilio.base_url) as raw:
        resp = await raw.post(f"/2010-04-01/Accounts/{twilio.account_sid}/Calls.json", data={"To": "+1"})
    assert resp.status_code == 401 and resp.json()["code"] == 20003 and resp.json()["status"] == 401


# ---------------------------------------------------------------- a Twilio call
async def test_a_twilio_call_is_redirected_to_dial_the_target_and_ends_transferred(
    twilio: TwilioRestDouble,
) -> None:
    async with live_call(twilio) as (ingress, c):
        call_id = c.call_id or ""
        twilio.on_update = stop_the_stream(c)
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: ended(ingress, call_id), timeout=15)
        assert [e.reason for e in ended(ingress, call_id)] == [events.EndReason.transferred]
        [update] = twilio.updates(c.call_sid)
        assert update.auth == (twilio.account_sid, TOKEN) and update.status == 200
        assert update.param("Twiml") == dial_twiml(TARGET)
        assert "<Dial><Number>+493012345678</Number></Dial>" in (update.param("Twiml") or "")
        assert not failures(ingress, call_id)
        assert not ingress.service.sessions and len(ingress.bus.kv["calls"]) == 0


async def test_a_transfer_after_playout_waits_for_the_agents_last_words(twilio: TwilioRestDouble) -> None:
    async with live_call(twilio) as (ingress, c):
        call_id = c.call_id or ""
        # "I am transferring you now" is still being synthesised when the agent's transfer arrives
        await transfer(ingress, call_id, after_playout=True, requested_by="agent", turn_id="bye")
        await ingress.bus.settle()
        assert not twilio.updates()
        for chunk in reply("bye", [10, 10]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: ended(ingress, call_id), timeout=15)
        assert [e.reason for e in ended(ingress, call_id)] == [events.EndReason.transferred]
        assert c.marks_echoed[-1] == "bye:0:1:f"  # the last words had played when the call was handed over
        assert len(twilio.updates(c.call_sid)) == 1


@pytest.mark.parametrize("status,code", [(404, 20404), (500, 20500)])
async def test_twilio_refusing_gives_transfer_failed_and_the_call_goes_on(
    twilio: TwilioRestDouble, status: int, code: int
) -> None:
    async with live_call(twilio) as (ingress, c):
        call_id = c.call_id or ""
        twilio.fail_next(status)
        await transfer(ingress, call_id, requested_by="agent")
        await ingress.bus.wait_for(lambda: failures(ingress, call_id), timeout=15)
        [failed] = failures(ingress, call_id)
        assert f"HTTP {status}" in failed.reason and str(code) in failed.reason and failed.requested_by == "agent"
        assert TARGET not in failed.reason
        # the call goes on: the agent still reaches the caller, nothing ended it
        before = len(c.frames)
        for chunk in reply("t2", [5]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: len(c.frames) >= before + 5, timeout=10)
        assert not ended(ingress, call_id) and not c.closed
        # and a later transfer can still succeed
        twilio.on_update = stop_the_stream(c)
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: ended(ingress, call_id), timeout=15)
        assert [e.reason for e in ended(ingress, call_id)] == [events.EndReason.transferred]


async def test_an_unknown_call_is_a_twilio_404(twilio: TwilioRestDouble) -> None:
    async with live_call(twilio) as (ingress, c):
        call_id = c.call_id or ""
        twilio.calls.clear()  # Twilio does not know this CallSid
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: failures(ingress, call_id), timeout=15)
        assert "HTTP 404, error 20404" in failures(ingress, call_id)[0].reason
        assert not ended(ingress, call_id)


async def test_a_call_of_another_twilio_account_is_not_sent_to_ours() -> None:
    async with (
        TwilioRestDouble(auth_token=TOKEN).running() as other,  # a different account than the stream's
        live_call(other) as (ingress, c),
    ):
        call_id = c.call_id or ""
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: failures(ingress, call_id), timeout=15)
        assert "another Twilio account" in failures(ingress, call_id)[0].reason
        assert not other.requests and not ended(ingress, call_id)


async def test_without_rest_credentials_a_transfer_fails_with_the_reason() -> None:
    async with live_call(None) as (ingress, c):
        call_id = c.call_id or ""
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: failures(ingress, call_id), timeout=15)
        [failed] = failures(ingress, call_id)
        assert "TWILIO_ACCOUNT_SID" in failed.reason and failed.requested_by == "supervisor"
        assert not ended(ingress, call_id) and not c.closed


async def test_an_unreachable_api_fails_the_transfer(twilio: TwilioRestDouble) -> None:
    from ..conftest import free_port

    async with live_call(twilio, twilio_api_base_url=f"http://127.0.0.1:{free_port()}") as (ingress, c):
        call_id = c.call_id or ""
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: failures(ingress, call_id), timeout=15)
        assert "could not be reached" in failures(ingress, call_id)[0].reason
        assert not ended(ingress, call_id)


async def test_the_caller_hanging_up_during_a_failed_transfer_ends_the_call_as_a_hang_up(
    twilio: TwilioRestDouble,
) -> None:
    async with live_call(twilio) as (ingress, c):
        call_id = c.call_id or ""
        async def hang_up_then_refuse(_: Recorded) -> Fault:
            await c.hangup()  # the caller hangs up while Twilio is still deciding, then Twilio refuses
            return Fault(500, 20500, "An internal server error has occurred")

        twilio.on_update = hang_up_then_refuse
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: ended(ingress, call_id), timeout=15)
        assert [e.reason for e in ended(ingress, call_id)] == [events.EndReason.caller_hangup]
        assert len(failures(ingress, call_id)) == 1


# ---------------------------------------------------------------- transports that cannot transfer
def test_webrtc_calls_keep_the_transport_default_which_refuses() -> None:
    assert WebRtcCall.transfer is Transport.transfer


async def test_a_transport_that_cannot_transfer_gives_transfer_failed() -> None:
    from .fakes import FakeTransport

    async with Ingress.running() as ingress:
        t = FakeTransport()
        call_id, task = await ingress.call(t)
        with pytest.raises(TransferRefused, match="transport cannot transfer"):
            await t.transfer(TARGET)
        await transfer(ingress, call_id, requested_by="agent")
        await ingress.bus.wait_for(lambda: failures(ingress, call_id))
        assert failures(ingress, call_id) == [
            events.TransferFailed(reason="transport cannot transfer", requested_by="agent")
        ]
        assert not task.done() and t.closed_with is None


async def test_a_chat_cannot_be_transferred() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    async with Ingress.running(call_token_key=key) as ingress:
        agent = AgentConfig(id="chat" + subjects.new_id()[:10], tenant_id="tenant-a", version=1, first_message=None)
        raw = agent.model_dump_json().encode()
        await ingress.bus.kv["agents"].put(subjects.agent_version_key(agent.id, 1), raw)
        await ingress.bus.kv["agents"].put(subjects.agent_key(agent.id), raw)
        token, _ = calltoken.mint(base64.b64decode(key), tenant_id="tenant-a", agent_id=agent.id,
                                  channel=rpc.CHANNEL, ttl_s=30, subject="user:u1")
        raw_answer = await ingress.bus.request(subjects.ingress_rpc(rpc.CHANNEL, rpc.OPEN),
                                               rpc.ChatOpen(token=token, wait_s=1).model_dump_json().encode(),
                                               timeout=5)
        call_id = ChatAnswer.model_validate_json(raw_answer).call_id
        assert call_id
        await transfer(ingress, call_id)
        await ingress.bus.wait_for(lambda: failures(ingress, call_id))
        assert failures(ingress, call_id) == [
            events.TransferFailed(reason="transport cannot transfer", requested_by="supervisor")
        ]
        assert not ended(ingress, call_id)
