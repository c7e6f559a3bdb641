"""A Twilio caller talks to an agent through ingress → media → stt → brain → tts over real NATS."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx
import pytest
from voice_runtime.bus import Bus

from bench.twilio_caller import TwilioCaller

from .conftest import PUBLIC, TWILIO_TOKEN, Platform, configure_agent, poll, speech, transcribe, words

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def caller(platform: Platform, number: str, **kw: object) -> TwilioCaller:
    return TwilioCaller(platform.ingress, auth_token=TWILIO_TOKEN, public_base_url=PUBLIC, to=number, **kw)  # type: ignore[arg-type]


async def test_full_call_greeting_question_barge_in_hangup(platform: Platform, platform_bus: Bus) -> None:
    number = "+15550100"
    agent = await configure_agent(platform_bus, number)
    question = speech("What time do you open tomorrow morning?")
    interruption = speech("Can you tell me about your fresh bread instead please")
    c = caller(platform, number)
    call_id = await c.dial()
    assert "<Connect><Stream url=\"wss://voice.example.test/twilio/media\">" in c.twiml
    await c.connect()
    try:
        # 1. the greeting: heard, and it is the agent's first message
        first = await c.wait_for_audio(0, 20)
        assert first is not None, "no greeting audio"
        await c.wait_for_silence(0.8, 20)
        greeting = transcribe(c.audio_between(0, time.monotonic()))
        expected = words(agent.first_message or "")
        assert len(words(greeting) & expected) >= len(expected) // 2, greeting

        # 2. a question gets a spoken reply
        c.say(question)
        reply_at = await c.wait_for_audio(time.monotonic() + 1.5, 30)
        assert reply_at is not None, "no reply to the question"

        # 3. speaking over the reply: `clear`, then silence from the agent
        await asyncio.sleep(0.5)
        c.say(interruption)
        for _ in range(60):
            if c.timings.clears:
                break
            await asyncio.sleep(0.05)
        assert c.timings.clears, "no clear after barge-in"
        onset = c.timings.speech_started[-1]
        assert c.timings.clears[0] - onset < 1.5
        # the caller stops hearing the agent quickly: playout pauses on speech onset, before the clear
        heard_after = [r.at for r in c.received if onset + 0.35 < r.at < c.timings.clears[0]]
        assert not heard_after, f"agent audio kept coming {heard_after[-1] - onset:.2f}s after speech onset"
        # nothing of the interrupted reply plays after the clear (a new reply may start later)
        after_clear = [r.at for r in c.received if c.timings.clears[0] < r.at < c.timings.clears[0] + 0.3]
        assert len(after_clear) <= 2, f"{len(after_clear)} frames right after clear"

        # 4. the interruption is answered
        new_reply = await c.wait_for_audio(c.timings.speech_ended[-1] if len(c.timings.speech_ended) > 1
                                           else time.monotonic(), 30)
        assert new_reply is not None, "the interrupting question got no reply"
        await asyncio.sleep(1.0)
    finally:
        await c.hangup()

    # 5. the call record and transcript reach PostgreSQL
    conn = await asyncpg.connect(platform.database_url)
    try:
        async def ended():  # type: ignore[no-untyped-def]
            return await conn.fetchrow("SELECT * FROM calls WHERE id = $1 AND status = 'ended'", call_id)

        row = await poll(ended, 15)
        assert row is not None and row["end_reason"] == "caller_hangup" and row["agent_id"] == agent.id

        async def turns():  # type: ignore[no-untyped-def]
            rows = await conn.fetch("SELECT * FROM call_turns WHERE call_id = $1 ORDER BY id", call_id)
            return rows if {r["speaker"] for r in rows} == {"caller", "agent"} and len(rows) >= 4 else None

        rows = await poll(turns, 20)
        assert rows, "transcript not stored"
        speakers = [r["speaker"] for r in rows]
        assert speakers[0] == "agent"  # the greeting
        assert any(r["interrupted"] for r in rows if r["speaker"] == "agent"), "barge-in not recorded"
        callers = " ".join(r["text"] for r in rows if r["speaker"] == "caller").lower()
        assert "open" in callers or "bread" in callers, callers
        caller_turns = {r["turn_id"] for r in rows if r["speaker"] == "caller"}
        answered = [r for r in rows if r["speaker"] == "agent" and r["turn_id"] in caller_turns]
        assert answered and all("voice_to_voice_ms" in r["latency_ms"] for r in answered), answered

        # 6. after the call: its summary (the embedded model's or the extractive fallback, which says so), KPIs,
        # usage and cost (all zero: this tenant has no price table)
        async def summary():  # type: ignore[no-untyped-def]
            return await conn.fetchrow("SELECT * FROM call_summaries WHERE call_id = $1", call_id)

        s = await poll(summary, 60)
        assert s is not None, "no summary stored"
        assert s["summary"].strip() and s["source"] in ("llm", "extractive")
        assert s["source"] == "llm" or s["fallback_reason"]
        kpis = json.loads(s["kpis"])
        assert kpis["handle_time_s"] > 0 and kpis["interruptions"] >= 1
        usage = json.loads(s["usage"])
        assert usage["llm_output_tokens"] > 0 and usage["tts_characters"] > 0
    finally:
        await conn.close()


async def test_bad_and_missing_signatures_are_refused(platform: Platform) -> None:
    params = {"CallSid": "CA" + "1" * 32, "From": "+15550111", "To": "+15550100"}
    async with httpx.AsyncClient(base_url=platform.ingress) as client:
        r = await client.post("/twilio/voice", data=params)
        assert r.status_code == 403
        r = await client.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": "bm90IHZhbGlk"})
        assert r.status_code == 403
        r = await client.post("/twilio/status", data={"CallSid": "CA1", "CallStatus": "completed"})
        assert r.status_code == 403
    import websockets

    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(platform.ingress.replace("http", "ws") + "/twilio/media",
                                      additional_headers={"X-Twilio-Signature": "bad"}):
            pass


async def test_unknown_number_hears_that_and_hangs_up(platform: Platform, platform_bus: Bus) -> None:
    await configure_agent(platform_bus, "+15550177")  # numbers exist, but not this one
    c = caller(platform, "+15550999")
    with pytest.raises(RuntimeError):
        await c.dial()
    assert "<Say>" in c.twiml and "<Hangup" in c.twiml and "<Stream" not in c.twiml


@pytest.mark.parametrize("garbage", [
    "{not json", '{"event": "media", "media": {"payload": "AAAA"}}', '{"event": "bogus"}', "x" * 70000,
])
async def test_protocol_garbage_ends_only_that_call(platform: Platform, platform_bus: Bus, garbage: str) -> None:
    number = "+15550101"
    await configure_agent(platform_bus, number)
    hello = speech("Hello, are you there?")
    good = caller(platform, number)
    await good.dial()
    await good.connect()
    try:
        assert await good.wait_for_audio(0, 20), "healthy call got no greeting"
        bad = caller(platform, number)
        await bad.dial()
        if garbage.startswith('{"event": "media"'):
            # media before start
            import websockets

            ws = await websockets.connect(platform.ingress.replace("http", "ws") + "/twilio/media",
                                          additional_headers=bad.sign("wss://voice.example.test/twilio/media", {}))
            await ws.send(garbage)
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(50):
                    await asyncio.wait_for(ws.recv(), 5)
        else:
            await bad.connect()
            await bad.send_raw(garbage)
            assert await bad.wait_closed(10), "the bad stream was not closed"
            await bad.close()
        # the healthy call still works: it answers a question
        good.say(hello)
        assert await good.wait_for_audio(time.monotonic() + 1.0, 30), "healthy call stopped working"
        assert platform.procs["ingress"].poll() is None
    finally:
        await good.hangup()
