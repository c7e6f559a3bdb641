"""Agents' intents through control-api: checked when a version is saved, and counted per agent from the turns
analytics records out of ``turn.completed`` (GET /v1/agents/{id}/intents/stats, and on the call's caller turns)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from voice_analytics.recorder import CallRecorder, turn_completed
from voice_schemas import events, make

from .helpers import bearer, insert_call, ok, populate

pytestmark = pytest.mark.integration

INTENTS: list[dict[str, Any]] = [
    {"name": "hours", "examples": ["When are you open?", "What are your opening hours?"],
     "answer": "We open at noon."},
    {"name": "address", "examples": ["Where are you?"], "answer": "12 Harbour Street."},
    {"name": "bye", "examples": ["Goodbye"], "tool": "end_call", "answer": "Bye!"},
]


def problem_field(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return str(r.json()["errors"][0]["field"]).removeprefix("body.")


async def test_intents_are_saved_and_checked(client: httpx.AsyncClient) -> None:
    t = await populate(client, "intents checks")
    admin = bearer(t.admin_key)
    body = {"name": "host", "tools": [{"type": "end_call"}], "intents": INTENTS, "intent_threshold": 0.55}
    agent = await ok(await client.post("/v1/agents", json=body, headers=admin), 201)
    assert [i["name"] for i in agent["intents"]] == ["hours", "address", "bye"]
    assert agent["intent_threshold"] == 0.55 and agent["intents"][0]["answer"] == "We open at noon."
    deployed = await ok(await client.get(f"/v1/agents/{agent['id']}/deployment", headers=admin))
    assert deployed["config"]["intents"][2]["tool"] == "end_call", "mirrored to KV for brain"

    async def refused(intents: list[dict[str, Any]], **extra: Any) -> str:
        r = await client.patch(f"/v1/agents/{agent['id']}", json={"intents": intents, **extra}, headers=admin)
        return problem_field(r)

    same = [INTENTS[0], {**INTENTS[1], "name": "HOURS"}]
    assert await refused(same) == "intents.1.name"
    assert await refused([{**INTENTS[0], "tool": "lookup"}]) == "intents.0.tool"
    needs_args = {"type": "http", "name": "book", "url": "https://api.example.com/book",
                  "parameters": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}}}
    assert await refused([{**INTENTS[0], "tool": "book"}], tools=[needs_args]) == "intents.0.tool"
    assert await refused([{**INTENTS[0], "examples": ["When are you open?", "when are  you OPEN?"]}]) == \
        "intents.0.examples.1"
    assert (await refused([{**INTENTS[0], "examples": []}])).startswith("intents.0.examples")
    assert (await refused([{**INTENTS[0], "surprise": 1}])).startswith("intents.0")
    assert await refused(INTENTS, intent_threshold=1.5) == "intent_threshold"
    # an HTTP tool without required arguments may run for an intent
    free = {**needs_args, "name": "tables", "parameters": {"type": "object", "properties": {}}}
    updated = await ok(await client.patch(f"/v1/agents/{agent['id']}", json={
        "tools": [free], "intents": [{**INTENTS[0], "tool": "tables"}]}, headers=admin))
    assert updated["intents"][0]["tool"] == "tables" and updated["version"] == 2


async def record_turn(pool: asyncpg.Pool, tenant_id: str, call_id: str, turn_id: str, text: str,
                      intent: events.TurnIntent | None) -> None:
    """The turn as analytics records it from brain's ``turn.completed``."""
    now = datetime.now(UTC).isoformat()
    done = events.TurnCompleted(caller_text=text, caller_started_at=now, caller_ended_at=now, agent_text="Sure.",
                                agent_started_at=now, agent_ended_at=now, intent=intent)
    env = make(done, tenant_id=tenant_id, call_id=call_id, turn_id=turn_id)
    assert await CallRecorder(pool).apply(env, turn_completed)


async def test_intent_counts_per_agent(client: httpx.AsyncClient, database_url: str) -> None:
    a, b = await populate(client, "intents counts A"), await populate(client, "intents counts B")
    body = {"name": "host", "tools": [{"type": "end_call"}], "intents": INTENTS}
    agent = await ok(await client.post("/v1/agents", json=body, headers=bearer(a.admin_key)), 201)
    other = await ok(await client.post("/v1/agents", json=body, headers=bearer(b.admin_key)), 201)
    old = datetime.now(UTC) - timedelta(days=3)
    recent = await insert_call(database_url, tenant_id=a.id, agent_id=agent["id"])
    earlier = await insert_call(database_url, tenant_id=a.id, agent_id=agent["id"], started_at=old)
    elsewhere = await insert_call(database_url, tenant_id=b.id, agent_id=other["id"])
    hours = events.TurnIntent(name="hours", confidence=0.8, cached=True)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await record_turn(pool, a.id, recent, "t1", "when do you open", hours)
        await record_turn(pool, a.id, recent, "t2", "and on sunday?", hours.model_copy(update={"confidence": 0.7}))
        await record_turn(pool, a.id, recent, "t3", "can I bring my dog", None)
        await record_turn(pool, a.id, earlier, "t1", "where are you", events.TurnIntent(
            name="address", confidence=0.62, method="lexical", cached=False))
        await record_turn(pool, b.id, elsewhere, "t1", "when do you open", hours)
    finally:
        await pool.close()

    stats = await ok(await client.get(f"/v1/agents/{agent['id']}/intents/stats", headers=bearer(a.admin_key)))
    counts = {i["name"]: i for i in stats["intents"]}
    assert [i["name"] for i in stats["intents"]] == ["hours", "address", "bye"], "most matched first"
    assert (counts["hours"]["turns"], counts["hours"]["cached"]) == (2, 2)
    assert counts["hours"]["avg_confidence"] == pytest.approx(0.75, abs=1e-3)
    assert (counts["address"]["turns"], counts["address"]["cached"]) == (1, 0)
    assert counts["bye"] == {"name": "bye", "turns": 0, "cached": 0, "avg_confidence": None, "configured": True}

    window = {"started_after": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
    stats = await ok(await client.get(f"/v1/agents/{agent['id']}/intents/stats", params=window,
                                      headers=bearer(a.admin_key)))
    assert {i["name"]: i["turns"] for i in stats["intents"]} == {"hours": 2, "address": 0, "bye": 0}

    # the analytics API: the same counts over UTC days
    today = datetime.now(UTC).date()
    stats = await ok(await client.get(f"/v1/analytics/agents/{agent['id']}/intents", headers=bearer(a.admin_key),
                                      params={"from": str(today - timedelta(days=1)), "to": str(today)}))
    assert {i["name"]: i["turns"] for i in stats["intents"]} == {"hours": 2, "address": 0, "bye": 0}
    r = await client.get(f"/v1/analytics/agents/{agent['id']}/intents", headers=bearer(b.admin_key))
    assert r.status_code == 404

    # the caller turn carries its intent in the call's transcript
    call = await ok(await client.get(f"/v1/calls/{recent}", headers=bearer(a.admin_key)))
    by_turn = {(t["turn_id"], t["speaker"]): t for t in call["turns"]}
    assert by_turn[("t1", "caller")]["intent"] == {"name": "hours", "confidence": pytest.approx(0.8), "cached": True}
    assert by_turn[("t3", "caller")]["intent"] is None and by_turn[("t1", "agent")]["intent"] is None

    # another tenant's agent is not found; a supervisor who does not own it neither
    r = await client.get(f"/v1/agents/{agent['id']}/intents/stats", headers=bearer(b.admin_key))
    assert r.status_code == 404
    r = await client.get(f"/v1/agents/{agent['id']}/intents/stats", headers=bearer(a.sup_key))
    assert r.status_code == 404
    r = await client.get(f"/v1/agents/{agent['id']}/intents/stats",
                         params={"started_after": "2030-01-02T00:00:00Z", "started_before": "2030-01-01T00:00:00Z"},
                         headers=bearer(a.admin_key))
    assert problem_field(r) == "query.started_after"
