"""analytics writes calls and turns exactly once, even when events are redelivered."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_runtime.bus import Bus
from voice_schemas import events, make, subjects

pytestmark = pytest.mark.integration


async def test_redelivered_events_do_not_duplicate_rows(private_nats_url: str, database_url: str) -> None:
    svc = AnalyticsService(AnalyticsSettings(nats_url=private_nats_url, database_url=database_url))
    await svc.start()
    bus = await Bus.connect(private_nats_url, "test")
    try:
        call_id = subjects.new_call_id()
        t = "tenant-rec"
        started = make(events.CallStarted(agent_id="a1", agent_version=2, channel="twilio"), tenant_id=t,
                       call_id=call_id)
        turn = make(events.TurnCompleted(caller_text="hello", agent_text="Hi there.",
                                         latency=events.LatencyBreakdown(voice_to_voice_ms=812.0)),
                    tenant_id=t, call_id=call_id, turn_id="turn-1")
        ended = make(events.CallEnded(reason=events.EndReason.caller_hangup, duration_s=3.5), tenant_id=t,
                     call_id=call_id)
        # the turn arrives before the call row exists: it is retried, not lost
        await bus.publish(turn)
        await asyncio.sleep(0.3)
        await bus.publish(started)
        await bus.publish(ended)
        # redeliveries: same event ids, new message ids (past the duplicate window)
        for env in (started, turn, ended):
            await bus.js.publish(env.subject, env.to_bytes(), headers={"Nats-Msg-Id": subjects.new_id()})
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(100):
                rows = await conn.fetch("SELECT speaker, text, latency_ms FROM call_turns WHERE call_id = $1 "
                                        "ORDER BY speaker", call_id)
                call = await conn.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
                if len(rows) == 2 and call and call["status"] == "ended":
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # let the redeliveries land
            rows = await conn.fetch("SELECT speaker, text FROM call_turns WHERE call_id = $1 ORDER BY speaker",
                                    call_id)
            assert [(r["speaker"], r["text"]) for r in rows] == [("agent", "Hi there."), ("caller", "hello")]
            call = await conn.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
            assert call["status"] == "ended" and call["end_reason"] == "caller_hangup"
            assert call["agent_version"] == 2 and call["duration_s"] == 3.5
        finally:
            await conn.close()
    finally:
        await bus.close()
        await svc.stop()
