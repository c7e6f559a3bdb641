"""The Twilio endpoint on the in-memory bus: webhook, status callback and Media Streams WebSocket served by
uvicorn on loopback, driven by the same Twilio caller as the e2e tests (no broker, no models)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from twilio.request_validator import RequestValidator
from voice_schemas import events, make

from bench.twilio_caller import TwilioCaller

from ..conftest import free_port
from .fakes import NUMBER, Ingress, reply

pytestmark = pytest.mark.integration

TOKEN = "twilio-test-token"
PUBLIC = "https://voice.example.test"


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[tuple[Ingress, str]]:
    """Ingress on loopback with exactly these Twilio settings (nothing comes from the environment)."""
    port = free_port()
    ingress = Ingress(**{"public_base_url": PUBLIC, "start_timeout_s": 5.0, **settings})
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


@pytest.fixture
async def served() -> AsyncIterator[tuple[Ingress, str]]:
    async with serving(twilio_auth_token=TOKEN) as s:
        yield s


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
        assert 19 <= len(c.frames) <= 21 and c.marks_echoed == ["t1:0:0", "t1:0:1:f"]
        # two frames a media message (TWILIO_FRAMES_PER_MESSAGE's default), never across a chunk's mark
        assert len(c.received) <= 12 and max(len(r.payload) for r in c.received) == 320
        # barge-in: the caller gets `clear`
        for chunk in reply("t2", [50]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: len(c.frames) > 30, timeout=10)
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
    assert await refused_upgrade(url, {"X-Twilio-Signature": "bad"}) == 403
    c = caller(url, to="+15550999")
    with pytest.raises(RuntimeError):
        await c.dial()
    assert "<Say>" in c.twiml and "<Hangup" in c.twiml and "<Stream" not in c.twiml
    assert not ingress.events(events.CallStarted)


async def refused_upgrade(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status a Media Streams WebSocket upgrade is refused with (fails if it is accepted)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url.replace("http", "ws", 1) + "/twilio/media", additional_headers=headers):
            pass
    return refused.value.response.status_code


async def test_the_stream_upgrade_without_a_signature_header_is_refused(served: tuple[Ingress, str]) -> None:
    _, url = served
    assert await refused_upgrade(url) == 403
    signed = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(PUBLIC.replace("https", "wss", 1)
                                                                              + "/twilio/media", {})}
    async with websockets.connect(url.replace("http", "ws", 1) + "/twilio/media", additional_headers=signed):
        pass  # the same upgrade, signed, is accepted


async def test_without_a_token_unsigned_requests_are_refused_unless_explicitly_allowed() -> None:
    params = {"CallSid": "CA" + "2" * 32, "From": "+15550111", "To": NUMBER}
    async with serving() as (ingress, url):  # no token, no allow flag: fail closed
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post("/twilio/voice", data=params)).status_code == 403
            r = await client.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": "anything"})
            assert r.status_code == 403
            assert (await client.post("/twilio/status", data={"CallSid": "CA1", "CallStatus": "completed"})
                    ).status_code == 403
        assert await refused_upgrade(url) == 403
        assert await refused_upgrade(url, {"X-Twilio-Signature": "anything"}) == 403
        assert not ingress.events(events.CallStarted)
    async with serving(twilio_allow_unsigned=True) as (ingress, url):  # local development, said explicitly
        c = TwilioCaller(url, public_base_url=PUBLIC, to=NUMBER)  # signs nothing
        call_id = await c.dial()
        await c.connect()
        try:
            await ingress.bus.wait_for(lambda: ingress.events(events.CallAnswered, call_id=call_id))
        finally:
            await c.hangup()
    async with serving(twilio_auth_token=TOKEN, twilio_allow_unsigned=True) as (ingress, url):  # a token wins
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post("/twilio/voice", data=params)).status_code == 403
        assert await refused_upgrade(url) == 403


async def test_an_oversized_webhook_body_is_refused_before_it_is_read_in_full(served: tuple[Ingress, str]) -> None:
    ingress, url = served
    limit = 64 * 1024  # the default of max_webhook_body_bytes
    big = b"Junk=" + b"x" * limit

    async def chunked(total: int) -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer encoding
        sent = 0
        while sent < total:
            sent += 4096
            yield b"x" * 4096

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=url) as client:
        for path in ("/twilio/voice", "/twilio/status"):
            assert (await client.post(path, content=big, headers=form)).status_code == 413
            r = await client.post(path, content=chunked(limit + 8192), headers=form)
            assert r.status_code == 413 and "content-length" not in r.request.headers
        # within the limit the body is read and its signature checked as before
        assert (await client.post("/twilio/voice", content=b"Junk=" + b"x" * 1000, headers=form)).status_code == 403
    assert not ingress.events(events.CallStarted)
