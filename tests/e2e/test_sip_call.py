"""A SIP caller talks to an agent through the whole platform: INVITE to ingress's SIP port, the caller's speech
as RTP, the agent's greeting and reply heard on the caller's RTP port and transcribed, BYE, and the call stored
with its transcript."""

from __future__ import annotations

import time

import asyncpg
import pytest
from voice_runtime.bus import Bus

from bench.sip_caller import SipCaller

from .conftest import Platform, configure_agent, heard_as_said, poll, speech, transcribe, words

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_a_sip_call_greeting_question_reply_and_bye(platform: Platform, platform_bus: Bus) -> None:
    number = "+15550140"
    agent = await configure_agent(platform_bus, number)
    question = speech("What time do you open tomorrow morning?")
    c = SipCaller("127.0.0.1", platform.sip_port, number)
    final = await c.dial()
    assert final.code == 200, f"{final.code} {final.phrase}"
    try:
        # 1. the greeting, heard on the caller's RTP port: the agent's first message
        assert await c.wait_for_audio(0, 30) is not None, "no greeting audio"
        await c.wait_for_silence(0.8, 30)
        greeting = transcribe(c.audio_between(0, time.monotonic()))
        expected = words(agent.first_message or "")
        assert len(words(greeting) & expected) >= len(expected) // 2, greeting

        # 2. a question gets a spoken reply
        asked_at = time.monotonic()
        c.say(question)
        reply_at = await c.wait_for_audio(asked_at + len(question) / 8000 + 0.3, 40)
        assert reply_at is not None, "no reply to the question"
        await c.wait_for_silence(1.0, 40)
        reply = transcribe(c.audio_between(reply_at - 0.1, time.monotonic()))
        assert words(reply), "the reply transcribes to nothing"
    finally:
        code = await c.hangup()
    assert code == 200

    # 3. BYE ended the call; the call and its transcript reach PostgreSQL
    conn = await asyncpg.connect(platform.database_url)
    try:
        async def ended():  # type: ignore[no-untyped-def]
            return await conn.fetchrow("SELECT * FROM calls WHERE agent_id = $1 AND status = 'ended'", agent.id)

        row = await poll(ended, 15)
        assert row is not None and row["end_reason"] == "caller_hangup" and row["channel"] == "sip"

        async def turns():  # type: ignore[no-untyped-def]
            rows = await conn.fetch("SELECT * FROM call_turns WHERE call_id = $1 ORDER BY id", row["id"])
            return rows if {r["speaker"] for r in rows} == {"caller", "agent"} else None

        rows = await poll(turns, 20)
        assert rows, "transcript not stored"
        assert rows[0]["speaker"] == "agent"
        callers = " ".join(r["text"] for r in rows if r["speaker"] == "caller").lower()
        assert "open" in callers or "tomorrow" in callers, callers
        said = " ".join(r["text"] for r in rows[1:] if r["speaker"] == "agent")
        assert heard_as_said(reply, said), f"heard {reply!r}, the agent's stored reply is {said!r}"
    finally:
        await conn.close()
