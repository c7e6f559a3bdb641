"""Live sentiment: a call whose caller goes from neutral to angry gets its sentiment events in order and exactly one
alert, at the utterance where the rolling value crosses the agent's threshold; each score is stored once.

Real NATS (a server of this test's own) and PostgreSQL, the analytics service as it runs, VADER as shipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from voice_analytics.sentiment import ALPHA
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_runtime.bus import Bus
from voice_schemas import AgentConfig, Envelope, events, make, parse, subjects
from voice_schemas.streams import KV_AGENTS

pytestmark = pytest.mark.integration

TENANT = "tenant-sentiment"
CALLER = [
    "I am calling about order 4471.",  # neutral (0.0)
    "It has not arrived yet.",  # neutral (0.0)
    "This is terrible, I am really angry.",  # negative: rolling -0.39, crosses -0.3
    "Your service is awful and useless, I hate this!",  # stays below: no second alert
    "Still angry.",
]


@pytest.fixture
async def analytics(private_nats_url: str, database_url: str) -> AsyncIterator[tuple[Bus, asyncpg.Connection]]:
    svc = AnalyticsService(AnalyticsSettings(nats_url=private_nats_url, database_url=database_url))
    await svc.start()
    bus = await Bus.connect(private_nats_url, "test")
    kv = await bus.provision()
    agent = AgentConfig(id="agent-sent", tenant_id=TENANT, version=3, sentiment_alert_threshold=-0.3)
    await kv[KV_AGENTS.bucket].put(
        subjects.agent_version_key(agent.id, agent.version), agent.model_dump_json().encode()
    )
    db = await asyncpg.connect(database_url)
    try:
        yield bus, db
    finally:
        await db.close()
        await bus.close()
        await svc.stop()


async def until_rows(db: asyncpg.Connection, call_id: str, table: str, n: int) -> None:
    deadline = time.monotonic() + 30
    while (
        await db.fetchval(f"SELECT count(*) FROM {table} WHERE {'id' if table == 'calls' else 'call_id'} = $1", call_id)
        < n
    ):
        assert time.monotonic() < deadline, f"timed out waiting for {n} rows in {table}"
        await asyncio.sleep(0.05)


async def test_neutral_to_angry_scores_in_order_with_one_alert(analytics: tuple[Bus, asyncpg.Connection]) -> None:
    bus, db = analytics
    call_id = subjects.new_call_id()
    await bus.publish(
        make(
            events.CallStarted(agent_id="agent-sent", agent_version=3, channel="twilio"),
            tenant_id=TENANT,
            call_id=call_id,
        )
    )
    await until_rows(db, call_id, "calls", 1)
    sub = await bus.js.subscribe(subjects.call_filter(call_id, "analytics", ">"), ordered_consumer=True)
    finals = [
        make(
            events.TranscriptFinalized(utterance_id=f"u{i}", text=text),
            tenant_id=TENANT,
            call_id=call_id,
            turn_id=f"t{i}",
        )
        for i, text in enumerate(CALLER)
    ]
    for env in finals:
        await bus.publish(env)
    await until_rows(db, call_id, "call_sentiment", len(CALLER))
    # a redelivery of an utterance (same event, new message id) stores nothing new and publishes only duplicates
    await bus.js.publish(finals[2].subject, finals[2].to_bytes(), headers={"Nats-Msg-Id": subjects.new_id()})
    await bus.publish(
        make(events.TranscriptFinalized(utterance_id="end", text="Okay."), tenant_id=TENANT, call_id=call_id)
    )
    await until_rows(db, call_id, "call_sentiment", len(CALLER) + 1)

    got: list[Envelope[Any]] = []
    while len(got) < len(CALLER) + 2:
        msg = await sub.next_msg(timeout=30)
        got.append(parse(msg.data))
    with pytest.raises(asyncio.TimeoutError):
        await sub.next_msg(timeout=0.5)  # nothing more: no copy from the redelivery, no second alert
    await sub.unsubscribe()

    types = [e.type for e in got]
    assert types == ["analytics.sentiment"] * 3 + ["sentiment.alert"] + ["analytics.sentiment"] * 3
    scores = [e.data for e in got if e.type == "analytics.sentiment"]
    assert [s.utterance_id for s in scores] == [f"u{i}" for i in range(len(CALLER))] + ["end"]
    assert [s.label for s in scores[: len(CALLER)]] == ["neutral", "neutral", "negative", "negative", "negative"]
    rolling = None
    for s in scores:
        rolling = s.compound if rolling is None else ALPHA * s.compound + (1 - ALPHA) * rolling
        assert s.rolling == pytest.approx(rolling, abs=1e-3) and s.speaker == "caller"
    alert = got[3].data
    assert alert.utterance_id == "u2" and alert.threshold == -0.3 and alert.rolling == scores[2].rolling
    assert got[3].turn_id == "t2"

    rows = await db.fetch(
        "SELECT utterance_id, label, alert, threshold FROM call_sentiment WHERE call_id = $1 ORDER BY id", call_id
    )
    assert [r["utterance_id"] for r in rows] == [f"u{i}" for i in range(len(CALLER))] + ["end"]
    assert [r["alert"] for r in rows] == [False, False, True, False, False, False]
    assert {r["threshold"] for r in rows} == {-0.3}
