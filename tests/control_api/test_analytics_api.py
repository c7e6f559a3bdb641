"""The analytics API: a tenant's price table (admins; versioned, audited) and the daily aggregates per agent (AHT,
volume, cost, sentiment, CSAT, first-call resolution over a configurable window), tenant-scoped with supervisors
seeing only their own agents; and the post-call analysis in the call detail.

Calls, summaries and scores are written into PostgreSQL as analytics writes them (analytics' own tests cover how
it computes them); the API is driven over HTTP in process."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from .helpers import BOOTSTRAP_KEY, TenantCreds, bearer, ok, populate, problem

pytestmark = pytest.mark.integration

D1 = date(2025, 3, 10)


def at(day: date, hour: float) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hour)


async def add_call(db: asyncpg.Connection, tenant: str, agent: str, start: datetime, *, number: str | None,
                   handle_s: float | None = 60.0, cost: tuple[str, str] | None = None,
                   sentiment: list[float] | None = None, csat: float | None = None) -> str:
    """A call as analytics records it: answered at ``start``, ended ``handle_s`` later (None: still live); with a
    summary costing ``cost`` (currency, total) and caller scores ``sentiment`` when given."""
    call_id = "CA" + uuid.uuid4().hex
    ended = start + timedelta(seconds=handle_s) if handle_s is not None else None
    await db.execute(
        "INSERT INTO calls (id, tenant_id, agent_id, agent_version, channel, from_number, status, started_at,"
        " answered_at, ended_at, end_reason) VALUES ($1,$2,$3,1,'twilio',$4,$5,$6,$6,$7,$8)",
        call_id, tenant, agent, number, "ended" if ended else "in_progress", start, ended,
        "caller_hangup" if ended else None)
    for i, s in enumerate(sentiment or []):
        await db.execute(
            "INSERT INTO call_sentiment (call_id, tenant_id, event_id, speaker, compound, label, rolling, threshold,"
            " at) VALUES ($1,$2,$3,'caller',$4,'neutral',$4,-0.5,$5)", call_id, tenant, uuid.uuid4().hex, s,
            start + timedelta(seconds=i))
    if cost is not None:
        kpis = {"handle_time_s": handle_s, **({"csat_estimate": csat} if csat is not None else {})}
        await db.execute(
            "INSERT INTO call_summaries (call_id, tenant_id, agent_id, summary, disposition, tags, source,"
            " fallback_reason, kpis, usage, prices, currency, cost_telephony, cost_stt, cost_llm_input,"
            " cost_llm_output, cost_tts, cost_total) VALUES ($1,$2,$3,'Moved an appointment.','resolved',"
            " ARRAY['appointment'],'llm',NULL,$4::jsonb,'{\"llm_input_tokens\": 1500}','{}',$5,0,0,0,0,0,$6)",
            call_id, tenant, agent, json.dumps(kpis), cost[0], Decimal(cost[1]))
    return call_id


@pytest.fixture(scope="module")
async def tenant(client: httpx.AsyncClient, database_url: str) -> dict[str, Any]:
    """A tenant with an admin agent and a supervisor's agent, and calls on D1 and after."""
    t = await populate(client, "analytics tenant")
    admin_agent = (await ok(await client.post("/v1/agents", json={"name": "front desk"},
                                              headers=bearer(t.admin_key)), 201))["id"]
    sup_agent = (await ok(await client.post("/v1/agents", json={"name": "sup desk"}, headers=bearer(t.sup_jwt)),
                          201))["id"]
    db = await asyncpg.connect(database_url)
    try:
        x, y, z = "+14155550101", "+14155550102", "+14155550103"
        calls = {
            "x1": await add_call(db, t.id, admin_agent, at(D1, 10), number=x, handle_s=60,
                                 cost=("USD", "0.100000"), sentiment=[-0.5, 0.1], csat=3.0),
            "y1": await add_call(db, t.id, admin_agent, at(D1, 11), number=y, handle_s=30,
                                 cost=("USD", "0.050000"), sentiment=[0.6], csat=4.5),
            "x2": await add_call(db, t.id, admin_agent, at(D1, 12), number=x, handle_s=120,
                                 cost=("EUR", "0.200000")),
            "z1": await add_call(db, t.id, admin_agent, at(D1, 15), number=z, handle_s=None),  # still live
            "web": await add_call(db, t.id, admin_agent, at(D1, 16), number=None, handle_s=90),
            "x3": await add_call(db, t.id, admin_agent, at(D1 + timedelta(days=1), 9), number=x, handle_s=10),
            "z2": await add_call(db, t.id, admin_agent, at(D1 + timedelta(days=5), 9), number=z, handle_s=10),
            "sup": await add_call(db, t.id, sup_agent, at(D1, 9), number=y, handle_s=40, cost=("USD", "0.010000")),
        }
    finally:
        await db.close()
    return {"t": t, "admin_agent": admin_agent, "sup_agent": sup_agent, "calls": calls}


def day_of(report: dict[str, Any], agent: str, day: date) -> dict[str, Any]:
    (item,) = [i for i in report["items"] if i["agent_id"] == agent and i["day"] == day.isoformat()]
    return item


async def test_daily_aggregates_per_agent(client: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    t: TenantCreds = tenant["t"]
    agent = tenant["admin_agent"]
    report = await ok(await client.get("/v1/analytics/daily", params={"from": D1.isoformat(), "to": (
        D1 + timedelta(days=6)).isoformat()}, headers=bearer(t.admin_key)))
    assert report["from"] == D1.isoformat() and report["fcr_window_hours"] == 72
    d1 = day_of(report, agent, D1)
    assert d1["calls"] == 5 and d1["ended_calls"] == 4
    assert d1["aht_s"] == pytest.approx((60 + 30 + 120 + 90) / 4)
    assert d1["summarized_calls"] == 3
    assert {k: Decimal(v) for k, v in d1["cost"].items()} == {"USD": Decimal("0.15"), "EUR": Decimal("0.2")}
    assert d1["avg_sentiment"] == pytest.approx(((-0.5 + 0.1) / 2 + 0.6) / 2)
    assert d1["avg_csat"] == pytest.approx(3.75)
    # callers x, y, z (the web call has no number): x called again within 72 h, z only after 5 days
    assert d1["fcr_callers"] == 3 and d1["fcr"] == pytest.approx(2 / 3, abs=1e-4)
    assert day_of(report, tenant["sup_agent"], D1)["calls"] == 1
    assert [i["day"] for i in report["items"] if i["agent_id"] == agent] == [
        D1.isoformat(), (D1 + timedelta(days=1)).isoformat(), (D1 + timedelta(days=5)).isoformat()]

    wide = await ok(await client.get(f"/v1/analytics/agents/{agent}/daily", params={
        "from": D1.isoformat(), "to": D1.isoformat(), "fcr_window_hours": 200}, headers=bearer(t.admin_key)))
    assert [i["agent_id"] for i in wide["items"]] == [agent]
    assert wide["items"][0]["fcr"] == pytest.approx(1 / 3, abs=1e-4)  # z's second call (120 h later) is inside 200 h
    narrow = await ok(await client.get("/v1/analytics/daily", params={
        "agent_id": agent, "from": D1.isoformat(), "to": D1.isoformat(), "fcr_window_hours": 1},
        headers=bearer(t.admin_key)))
    assert narrow["items"][0]["fcr"] == 1.0  # x's call again two hours later is outside 1 h


async def test_a_supervisor_sees_only_their_agents(client: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    t: TenantCreds = tenant["t"]
    params = {"from": D1.isoformat(), "to": (D1 + timedelta(days=6)).isoformat()}
    for token in (t.sup_jwt, t.sup_key):
        report = await ok(await client.get("/v1/analytics/daily", params=params, headers=bearer(token)))
        assert {i["agent_id"] for i in report["items"]} == {tenant["sup_agent"]}
        problem(await client.get(f"/v1/analytics/agents/{tenant['admin_agent']}/daily", params=params,
                                 headers=bearer(token)), 404)
    own = await ok(await client.get(f"/v1/analytics/agents/{tenant['sup_agent']}/daily", params=params,
                                    headers=bearer(t.sup_jwt)))
    assert own["items"][0]["cost"] == {"USD": "0.010000"}


async def test_another_tenant_sees_nothing(client: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    other = await populate(client, "analytics other")
    params = {"from": D1.isoformat(), "to": D1.isoformat()}
    assert (await ok(await client.get("/v1/analytics/daily", params=params, headers=bearer(other.admin_key))))[
        "items"] == []
    problem(await client.get(f"/v1/analytics/agents/{tenant['admin_agent']}/daily", params=params,
                             headers=bearer(other.admin_key)), 404)
    problem(await client.get(f"/v1/tenants/{tenant['t'].id}/prices", headers=bearer(other.admin_key)), 404)
    problem(await client.get(f"/v1/calls/{tenant['calls']['x1']}", headers=bearer(other.admin_key)), 404)


@pytest.mark.parametrize("params,field", [
    ({"from": "2025-03-10", "to": "2025-03-01"}, "query.from"),
    ({"from": "2023-01-01", "to": "2025-01-01"}, "query.from"),
    ({"from": "1999-12-31", "to": "2000-01-02"}, "query.from"),
    ({"fcr_window_hours": "0"}, "fcr_window_hours"),
])
async def test_a_bad_range_is_refused(client: httpx.AsyncClient, tenant: dict[str, Any], params: dict[str, str],
                                      field: str) -> None:
    body = problem(await client.get("/v1/analytics/daily", params=params, headers=bearer(tenant["t"].admin_key)),
                   422)
    assert any(field in e["field"] for e in body["errors"]), body


async def test_the_default_range_is_the_last_30_days(client: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    report = await ok(await client.get("/v1/analytics/daily", headers=bearer(tenant["t"].admin_key)))
    today = datetime.now(UTC).date()
    assert report["to"] == today.isoformat() and report["from"] == (today - timedelta(days=29)).isoformat()


async def test_the_call_detail_carries_its_analysis(client: httpx.AsyncClient, tenant: dict[str, Any]) -> None:
    admin = bearer(tenant["t"].admin_key)
    detail = await ok(await client.get(f"/v1/calls/{tenant['calls']['x1']}", headers=admin))
    a = detail["analytics"]
    assert a["summary"] == "Moved an appointment." and a["disposition"] == "resolved" and a["source"] == "llm"
    assert a["tags"] == ["appointment"] and a["kpis"] == {"handle_time_s": 60.0, "csat_estimate": 3.0}
    assert a["cost"] == {"currency": "USD", "telephony": "0.000000", "stt": "0.000000", "llm_input": "0.000000",
                         "llm_output": "0.000000", "tts": "0.000000", "total": "0.100000"}
    assert a["usage"] == {"llm_input_tokens": 1500}
    assert detail["id"] == tenant["calls"]["x1"] and "turns" in detail  # the existing fields are unchanged
    assert (await ok(await client.get(f"/v1/calls/{tenant['calls']['web']}", headers=admin)))["analytics"] is None


async def test_the_price_table(client: httpx.AsyncClient) -> None:
    t = await populate(client, "prices tenant")
    admin, url = bearer(t.admin_key), f"/v1/tenants/{t.id}/prices"
    r = await client.get(url, headers=admin)
    default = await ok(r)
    assert default["is_default"] and default["version"] == 0 and default["currency"] == "USD"
    assert Decimal(default["telephony_per_minute"]) == 0 and r.headers["etag"]

    prices = {"currency": "EUR", "telephony_per_minute": "0.0085", "stt_per_minute": "0.006",
              "llm_input_per_1k_tokens": "0.00015", "llm_output_per_1k_tokens": "0.0006", "tts_per_1k_chars": "0.015"}
    r = await client.put(url, json={**prices, "version": 0}, headers=admin)
    stored = await ok(r)
    assert not stored["is_default"] and stored["version"] == 1
    assert {k: Decimal(stored[k]) if k != "currency" else stored[k] for k in prices} == {
        k: Decimal(v) if k != "currency" else v for k, v in prices.items()}
    assert (await ok(await client.get(url, headers=admin)))["llm_input_per_1k_tokens"] == stored[
        "llm_input_per_1k_tokens"]
    problem(await client.put(url, json={**prices, "version": 0}, headers=admin), 409)  # stale
    problem(await client.put(url, json=prices, headers={**admin, "If-Match": r.headers["etag"] + "x"}), 412)
    partial = await ok(await client.put(url, json={"currency": "EUR", "tts_per_1k_chars": "0.02"},
                                        headers={**admin, "If-Match": r.headers["etag"]}))
    assert partial["version"] == 2 and Decimal(partial["telephony_per_minute"]) == 0  # left out: 0

    for bad in ({"telephony_per_minute": "-1"}, {"stt_per_minute": "0.0000001"}, {"currency": "euro"},
                {"tts_per_1k_chars": "123456789"}, {"unknown": "1"}):
        problem(await client.put(url, json=bad, headers=admin), 422)
    problem(await client.put(url, json=prices, headers=bearer(t.sup_jwt)), 403)
    problem(await client.get(url, headers=bearer(t.sup_key)), 403)
    # a platform admin may set any tenant's table
    assert (await ok(await client.put(url, json=prices, headers=bearer(BOOTSTRAP_KEY))))["version"] == 3
    log = await ok(await client.get("/v1/audit-log", params={"action": "tenant.prices_update"}, headers=admin))
    assert len([e for e in log["items"] if e["action"] == "tenant.prices_update"]) == 3
    problem(await client.get("/v1/tenants/nosuchtenant/prices", headers=bearer(BOOTSTRAP_KEY)), 404)
