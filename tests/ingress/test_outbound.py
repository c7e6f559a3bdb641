"""Outbound calls in ingress: the DialRequest handler, the Twilio dialer against the Twilio REST test double (its
request, auth, TwiML and status callbacks), the call's dial statuses and end reasons, and the answering-machine
check. Ingress runs on the in-memory bus (as the other ingress tests); tests/e2e/test_outbound_call.py places a
call through control-api with every service running."""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from voice_ingress.dialing import stream_twiml
from voice_runtime.secretbox import SecretBox
from voice_schemas import AgentConfig, events, make, subjects
from voice_schemas.agent import OutboundSettings

from bench.twilio_caller import TwilioCaller

from ..doubles.twilio_rest import TwilioRestDouble
from .fakes import Ingress
from .test_twilio_route import PUBLIC, TOKEN, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TO, FROM = "+14155550100", "+14155550199"


@contextlib.asynccontextmanager
async def dialing(**outbound: Any) -> AsyncIterator[tuple[Ingress, str, TwilioRestDouble, AgentConfig]]:
    async with TwilioRestDouble(auth_token=TOKEN).running() as twilio, serving(
        twilio_auth_token=TOKEN, twilio_account_sid=twilio.account_sid, twilio_api_base_url=twilio.base_url,
    ) as (ingress, url):
        agent = AgentConfig(id="out-agent", tenant_id="tenant-a", first_message="Hi, this is the clinic calling.",
                            outbound=OutboundSettings(**outbound))
        raw = agent.model_dump_json().encode()
        await ingress.bus.kv["agents"].put(subjects.agent_key(agent.id), raw)
        await ingress.bus.kv["agents"].put(subjects.agent_version_key(agent.id, 1), raw)
        yield ingress, url, twilio, agent


async def dial(ingress: Ingress, agent: AgentConfig, **kw: Any) -> tuple[str, events.DialReply]:
    req = events.DialRequest(call_id=subjects.new_call_id(), tenant_id=agent.tenant_id, agent_id=agent.id,
                             to_number=TO, from_number=FROM, channel="twilio",
                             agent_speaks_first=agent.outbound.speaks_first,
                             machine_detection=agent.outbound.machine_detection, **kw)
    raw = await ingress.bus.request(subjects.ingress_rpc("dial", "place"), req.model_dump_json().encode(), timeout=5)
    return req.call_id, events.DialReply.model_validate_json(raw)


def statuses(ingress: Ingress, call_id: str) -> list[str]:
    return [e.data.status for e in ingress.events(events.CallDialStatus, call_id=call_id)]


def ended(ingress: Ingress, call_id: str) -> list[events.CallEnded]:
    return [e.data for e in ingress.events(events.CallEnded, call_id=call_id)]


async def test_a_twilio_outbound_call_rings_connects_its_stream_and_ends() -> None:
    async with dialing() as (ingress, url, twilio, agent):
        call_id, answer = await dial(ingress, agent)
        assert answer.accepted, answer
        [started] = ingress.events(events.CallStarted, call_id=call_id)
        assert (started.tenant_id, started.data.agent_id, started.data.to_number, started.data.from_number) == (
            "tenant-a", agent.id, TO, FROM)
        await ingress.bus.wait_for(lambda: bool(twilio.creates()))
        [create] = twilio.creates()
        # the request Twilio gets: the platform's account, the numbers, TwiML back to the media stream, callbacks
        assert create.auth == (twilio.account_sid, TOKEN) and create.status == 201
        assert (create.param("To"), create.param("From")) == (TO, FROM)
        assert create.param("Twiml") == stream_twiml(f"wss://voice.example.test/twilio/media?call_id={call_id}",
                                                     call_id)
        assert f'<Parameter name="call_id" value="{call_id}"' in (create.param("Twiml") or "")
        assert create.param("StatusCallback") == f"{PUBLIC}/twilio/status?call_id={call_id}"
        assert create.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
        sid = next(iter(twilio.status_callbacks))

        assert await twilio.call_back(sid, "ringing", public=PUBLIC, real=url) == 204
        await ingress.bus.wait_for(lambda: statuses(ingress, call_id) == ["ringing"])
        # Twilio runs the TwiML: the callee's media stream connects with the call id
        callee = TwilioCaller(url, auth_token=TOKEN, public_base_url=PUBLIC)
        callee.call_sid, callee.call_id = sid, re.findall(r'value="([^"]+)"', create.param("Twiml") or "")[0]
        await callee.connect(f"call_id={call_id}")  # the stream URL as the TwiML gives it, signed with its query
        try:
            assert await twilio.call_back(sid, "in-progress", public=PUBLIC, real=url) == 204
            await ingress.bus.wait_for(lambda: statuses(ingress, call_id) == ["ringing", "answered"])
            [answered] = ingress.events(events.CallAnswered, call_id=call_id)
            assert answered.data.greet is True  # the agent speaks first
            # a status callback without a valid signature changes nothing
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{url}/twilio/status?call_id={call_id}", data={"CallSid": sid,
                                      "CallStatus": "busy"}, headers={"X-Twilio-Signature": "forged"})
            assert r.status_code == 403 and statuses(ingress, call_id) == ["ringing", "answered"]
            assert await twilio.call_back(sid, "completed", public=PUBLIC, real=url) == 204
            await ingress.bus.wait_for(lambda: bool(ended(ingress, call_id)))
            assert ended(ingress, call_id)[0].reason == events.EndReason.status_callback
        finally:
            await callee.close()


@pytest.mark.parametrize(("twilio_status", "dial_status", "reason"), [
    ("busy", "busy", events.EndReason.busy),
    ("no-answer", "no_answer", events.EndReason.no_answer),
    ("failed", "failed", events.EndReason.dial_failed),
])
async def test_a_call_that_does_not_connect_ends_with_its_status(
    twilio_status: str, dial_status: str, reason: events.EndReason
) -> None:
    async with dialing() as (ingress, url, twilio, agent):
        call_id, answer = await dial(ingress, agent)
        assert answer.accepted
        await ingress.bus.wait_for(lambda: bool(twilio.status_callbacks))
        sid = next(iter(twilio.status_callbacks))
        assert await twilio.call_back(sid, twilio_status, public=PUBLIC, real=url) == 204
        await ingress.bus.wait_for(lambda: bool(ended(ingress, call_id)))
        assert statuses(ingress, call_id) == [dial_status]
        assert [e.reason for e in ended(ingress, call_id)] == [reason]
        assert await ingress.service.call_record(call_id) is None  # forgotten


async def test_twilio_refusing_the_call_fails_it_and_no_account_refuses_the_dial() -> None:
    async with dialing() as (ingress, _, twilio, agent):
        twilio.fail_next(400, 21211, "Invalid 'To' Phone Number")
        call_id, answer = await dial(ingress, agent)
        assert answer.accepted  # taken: the dial itself fails, and says so
        await ingress.bus.wait_for(lambda: bool(ended(ingress, call_id)))
        assert statuses(ingress, call_id) == ["failed"]
        [end] = ended(ingress, call_id)
        assert end.reason == events.EndReason.dial_failed and "21211" in (end.detail or "")
        assert TO not in (end.detail or "")
        # an unknown agent: refused before anything is dialled
        _, refused = await dial(ingress, agent.model_copy(update={"id": "nobody"}))
        assert not refused.accepted and "agent" in refused.detail
    async with serving(twilio_auth_token=TOKEN) as (ingress, _):  # no TWILIO_ACCOUNT_SID
        _, refused = await dial(ingress, AgentConfig(id="x", tenant_id="tenant-a"))
        assert not refused.accepted and "TWILIO_ACCOUNT_SID" in refused.detail


async def test_a_tenant_with_its_own_twilio_account_dials_through_it() -> None:
    """The tenant's secrets twilio_account_sid / twilio_auth_token: the call is created with its credentials, and
    its status callbacks and media stream, signed with its token, are accepted; the platform's account is unused."""
    key = base64.b64encode(os.urandom(32)).decode()
    platform_account = "AC" + "1" * 32
    async with TwilioRestDouble(auth_token="tenant-token-abc").running() as twilio, serving(
        twilio_auth_token=TOKEN, twilio_account_sid=platform_account, twilio_api_base_url=twilio.base_url,
        secrets_key=key,
    ) as (ingress, url):
        box = SecretBox(base64.b64decode(key))
        for name, value in (("twilio_account_sid", twilio.account_sid), ("twilio_auth_token", twilio.auth_token)):
            await ingress.bus.kv["secrets"].put(subjects.secret_key("tenant-a", name),
                                                box.seal("tenant-a", name, value))
        agent = AgentConfig(id="own-account", tenant_id="tenant-a")
        await ingress.bus.kv["agents"].put(subjects.agent_key(agent.id), agent.model_dump_json().encode())
        call_id, answer = await dial(ingress, agent)
        assert answer.accepted, answer
        await ingress.bus.wait_for(lambda: bool(twilio.status_callbacks))
        [create] = twilio.creates()
        assert create.auth == (twilio.account_sid, "tenant-token-abc") and create.status == 201
        sid = next(iter(twilio.status_callbacks))
        assert await twilio.call_back(sid, "ringing", public=PUBLIC, real=url) == 204  # the tenant's signature
        callee = TwilioCaller(url, auth_token="tenant-token-abc", public_base_url=PUBLIC)
        callee.call_sid, callee.call_id = sid, call_id
        await callee.connect(f"call_id={call_id}")
        try:
            await ingress.bus.wait_for(lambda: bool(ingress.events(events.CallAnswered, call_id=call_id)))
            assert statuses(ingress, call_id) == ["ringing"]
        finally:
            await callee.close()
        # the tenant's token signs only its own calls: not an inbound call's webhook
        other = TwilioCaller(url, auth_token="tenant-token-abc", public_base_url=PUBLIC)
        with pytest.raises(httpx.HTTPStatusError):
            await other.dial()


async def answered_call(ingress: Ingress, url: str, twilio: TwilioRestDouble, agent: AgentConfig) -> tuple[
        str, TwilioCaller]:
    call_id, answer = await dial(ingress, agent)
    assert answer.accepted
    await ingress.bus.wait_for(lambda: bool(twilio.status_callbacks))
    sid = next(iter(twilio.status_callbacks))
    callee = TwilioCaller(url, auth_token=TOKEN, public_base_url=PUBLIC)
    callee.call_sid, callee.call_id = sid, call_id
    await callee.connect()
    await ingress.bus.wait_for(lambda: bool(ingress.events(events.CallAnswered, call_id=call_id)))
    assert await twilio.call_back(sid, "in-progress", public=PUBLIC, real=url) == 204
    await ingress.bus.wait_for(lambda: "answered" in statuses(ingress, call_id))
    return call_id, callee


async def speech(ingress: Ingress, call_id: str, *events_: Any) -> None:
    for e in events_:
        await ingress.bus.publish(make(e, tenant_id="tenant-a", call_id=call_id))


async def test_machine_check_hangs_up_on_a_long_greeting_and_lets_a_person_talk() -> None:
    async with dialing(machine_detection="hangup", machine_greeting_s=2.0) as (ingress, url, twilio, agent):
        call_id, callee = await answered_call(ingress, url, twilio, agent)
        try:
            # the agent waits for the callee while the check runs
            assert ingress.events(events.CallAnswered, call_id=call_id)[0].data.greet is False
            await speech(ingress, call_id, events.SpeechStarted(at_ms=300),
                         events.SpeechStopped(at_ms=3600, speech_ms=3300))
            await ingress.bus.wait_for(lambda: bool(ended(ingress, call_id)))
            assert ended(ingress, call_id)[0].reason == events.EndReason.machine
        finally:
            await callee.close()
        twilio.status_callbacks.clear()
        call_id, callee = await answered_call(ingress, url, twilio, agent)
        try:
            await speech(ingress, call_id, events.SpeechStarted(at_ms=300),
                         events.SpeechStopped(at_ms=900, speech_ms=600))  # "Hello?"
            await ingress.bus.wait_for(lambda: not ingress.service.dialing._checks)
            assert not ended(ingress, call_id) and not ingress.events(events.HangUp, call_id=call_id)
        finally:
            await callee.close()


async def test_machine_check_leaves_the_message_after_the_greeting() -> None:
    async with dialing(machine_detection="message", machine_greeting_s=1.5,
                       machine_message="Please call the clinic back.") as (ingress, url, twilio, agent):
        call_id, callee = await answered_call(ingress, url, twilio, agent)
        try:
            await speech(ingress, call_id, events.SpeechStarted(at_ms=200))  # still speaking after 1.5 s: a machine
            await ingress.bus.wait_for(lambda: bool(ingress.service.dialing._checks.get(call_id)
                                                    and ingress.service.dialing._checks[call_id].verdict))
            assert not ingress.events(events.ReplyChunk, call_id=call_id)  # not while the greeting goes on
            await speech(ingress, call_id, events.SpeechStopped(at_ms=6000, speech_ms=5800))  # the beep
            await ingress.bus.wait_for(lambda: bool(ingress.events(events.HangUp, call_id=call_id)))
            [chunk] = ingress.events(events.ReplyChunk, call_id=call_id)
            assert chunk.data.text == "Please call the clinic back." and chunk.turn_id == "machine-message"
            [hang] = ingress.events(events.HangUp, call_id=call_id)
            assert hang.turn_id == "machine-message" and hang.data.after_playout
            assert hang.data.reason == events.EndReason.machine
        finally:
            await callee.close()
