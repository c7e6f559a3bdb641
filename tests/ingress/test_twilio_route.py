"""The Twilio endpoint on the in-memory bus: webhook, status callback and Media Streams WebSocket served by
uvicorn on loopback, driven by the same Twilio caller as the e2e tests (no broker, no models)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from voice_schemas import events, make

from bench.twilio_caller import TwilioCaller

from ..conftest import free_port
from .fakes import NUMBER, Ingress, reply

pytestmark = pytest.mark.integration

TOKEN = "twilio-test-token"
PUBLIC = "https://voice.example.test"


@pytest.fixture
async def served() -> AsyncIterator[tuple[Ingress, str]]:
    port = free_port()
    ingress = Ingress(twilio_auth_token=TOKEN, public_base_url=PUBLIC, start_timeout_s=5.0)
    await ingress.start()
    server = uvicorn.Server(uvicorn.Config(ingress.service.app(), host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield ingress, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await ingress.stop()


def caller(base_url: str, to: str = NUMBER) -> TwilioCaller:
    return TwilioCaller(base_url, auth_token=TOKEN, public_base_url=PUBLIC, to=to)


@pytest.mark.timeout(60)
async def test_a_twilio_call_through_the_route(served: tuple[Ingress, str]) -> None:
    ingress, url = served
    c = caller(url)
    call_id = await c.dial()
    assert '<Connect><Stream url="wss://voice.example.test/twilio/media">' in c.twiml
    [started] = ingress.events(events.CallStarted, call_id=call_id)
    assert started.data.channel == events.Channel.twilio and started.data.provider_call_id == c.call_sid
    await c.connect()
    try:
        await ingress.bus.wait_for(lambda: ingress.events(events.CallAnswered, call_id=call_id))
        [answered] = ingress.events(events.CallAnswered, call_id=call_id)
        assert answered.data.stream_id == c.stream_sid and answered.data.media_format == "audio/x-mulaw;rate=8000"
        # agent audio: μ-law media at real-time pace, a mark per chunk echoed back → heard chunks
        for chunk in reply("t1", [10, 10]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: ingress.events(events.PlayoutFinished, call_id=call_id), timeout=10)
        [done] = ingress.events(events.PlayoutFinished, call_id=call_id)
        assert done.turn_id == "t1" and done.data.heard_chunks == [0, 1] and not done.data.cleared
        assert 19 <= len(c.received) <= 21 and c.marks_echoed == ["t1:0:0", "t1:0:1:f"]
        # barge-in: the caller gets `clear`
        for chunk in reply("t2", [50]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: len(c.received) > 30, timeout=10)
        await ingress.bus.publish(make(events.BargeIn(at_ms=0), tenant_id="tenant-a", call_id=call_id, epoch=1))
        await ingress.bus.wait_for(lambda: bool(c.timings.clears), timeout=5)
        # DTMF from the keypad
        await c._send({"event": "dtmf", "streamSid": c.stream_sid, "dtmf": {"track": "inbound_track", "digit": "5"}})
        await ingress.bus.wait_for(lambda: ingress.events(events.DtmfReceived, call_id=call_id))
    finally:
        await c.hangup()
    await ingress.bus.wait_for(lambda: ingress.events(events.CallEnded, call_id=call_id))
    [ended] = ingress.events(events.CallEnded, call_id=call_id)
    assert ended.data.reason == events.EndReason.caller_hangup
    assert not ingress.service.sessions and len(ingress.bus.kv["calls"]) == 0


@pytest.mark.timeout(60)
async def test_status_callback_garbage_and_a_dead_socket_each_end_their_call(served: tuple[Ingress, str]) -> None:
    ingress, url = served
    a, b, d = caller(url), caller(url), caller(url)
    for c in (a, b, d):
        await c.dial()
        await c.connect()
    await ingress.bus.wait_for(lambda: len(ingress.service.sessions) == 3)
    assert await a.status_callback("completed") == 204
    assert await a.wait_closed(5)
    await b.send_raw('{"event": "bogus"}')
    assert await b.wait_closed(5)
    await d.close()  # no `stop`: the connection just goes away
    await ingress.bus.wait_for(lambda: len(ingress.events(events.CallEnded)) == 3)
    reasons = {e.call_id: (e.data.reason, e.data.detail) for e in ingress.events(events.CallEnded)}
    assert reasons == {a.call_id: (events.EndReason.status_callback, None),
                       b.call_id: (events.EndReason.protocol_error, "unknown event 'bogus'"),
                       d.call_id: (events.EndReason.connection_lost, None)}
    assert b.close_code == 1008
    await a.close()
    await b.close()


async def test_signatures_are_checked_and_unknown_numbers_hear_goodbye(served: tuple[Ingress, str]) -> None:
    ingress, url = served
    params = {"CallSid": "CA" + "1" * 32, "From": "+15550111", "To": NUMBER}
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/twilio/voice", data=params)).status_code == 403
        r = await client.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": "bm90IHZhbGlk"})
        assert r.status_code == 403
        assert (await client.post("/twilio/status", data={"CallSid": "CA1", "CallStatus": "completed"})).status_code \
            == 403
    import websockets

    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url.replace("http", "ws") + "/twilio/media",
                                      additional_headers={"X-Twilio-Signature": "bad"}):
            pass
    c = caller(url, to="+15550999")
    with pytest.raises(RuntimeError):
        await c.dial()
    assert "<Say>" in c.twiml and "<Hangup" in c.twiml and "<Stream" not in c.twiml
    assert not ingress.events(events.CallStarted)
