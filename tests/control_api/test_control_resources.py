"""Resources and API behaviour: problem+json, validation, mass assignment, versioning, optimistic concurrency,
numbers, calls, webhooks, audit log, pagination, CORS, migrations."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from voice_runtime import db

from .helpers import TENANT_TABLES, TenantCreds, bearer, insert_call, ok, populate, problem, unique_number

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def tenant(client: httpx.AsyncClient) -> TenantCreds:
    return await populate(client, "resources")


# ------------------------------------------------------------------ errors
async def test_errors_are_problem_json_everywhere(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    body = problem(await client.get("/v1/nowhere", headers=admin), 404)
    assert body["instance"] == "/v1/nowhere" and body["request_id"]
    r = await client.put("/v1/calls", headers=admin)
    problem(r, 405)
    assert "GET" in r.headers["allow"]
    r = await client.post("/v1/agents", json={"llm": {"temperature": 5}}, headers=admin)
    body = problem(r, 422)
    assert body["errors"][0]["field"] == "body.llm.temperature" and "temperature" in body["detail"]
    r = await client.post("/v1/agents", content=b"{not json", headers={**admin, "content-type": "application/json"})
    problem(r, 422)
    r = await client.get("/v1/agents", params={"limit": 0}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "query.limit"
    r = await client.get("/v1/calls", params={"started_after": "yesterday"}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "query.started_after"
    r = await client.post("/v1/agents", json={"system_prompt": "nul \u0000 byte"}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.system_prompt"
    problem(await client.get("/v1/agents/not%20an%20id", headers=admin), 422)
    problem(await client.get("/v1/agents/" + "a" * 32, headers=admin), 404)


async def test_request_ids_are_echoed_or_generated(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    r = await client.get("/v1/agents", headers={**bearer(tenant.admin_key), "X-Request-Id": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    r = await client.get("/v1/agents", headers={**bearer(tenant.admin_key), "X-Request-Id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces" and len(r.headers["x-request-id"]) == 32
    r = await client.get("/v1/agents/" + "b" * 32, headers={**bearer(tenant.admin_key), "X-Request-Id": "abc"})
    assert r.json()["request_id"] == "abc"


async def test_mass_assignment_is_refused_with_the_field_name(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    for field, value in (("tenant_id", "other"), ("id", "mine"), ("version", 7), ("created_at", "2020-01-01")):
        r = await client.post("/v1/agents", json={"name": "x", field: value}, headers=admin)
        assert problem(r, 422)["errors"][0]["field"] == f"body.{field}"
    agent = await ok(await client.post("/v1/agents", json={"name": "mass"}, headers=admin), 201)
    r = await client.patch(f"/v1/agents/{agent['id']}", json={"tenant_id": "other"}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.tenant_id"
    r = await client.patch(f"/v1/agents/{agent['id']}", json={"name": "y", "version": 99}, headers=admin)
    problem(r, 409)  # `version` is a precondition, never a value
    r = await client.post(
        "/v1/users", json={"email": "m@example.com", "password": "long enough", "tenant_id": "x"}, headers=admin
    )
    assert problem(r, 422)["errors"][0]["field"] == "body.tenant_id"
    got = await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin))
    assert got["tenant_id"] == tenant.id and got["version"] == 1


# ------------------------------------------------------------------ agents and versions
async def test_every_update_is_a_new_immutable_version(
    client: httpx.AsyncClient, tenant: TenantCreds, database_url: str
) -> None:
    admin = bearer(tenant.admin_key)
    r = await client.post(
        "/v1/agents",
        json={"name": "Desk", "system_prompt": "v1 prompt", "llm": {"temperature": 0.2, "model": "m1"}},
        headers=admin,
    )
    v1 = await ok(r, 201)
    assert r.headers["etag"] == '"1"' and r.headers["location"] == f"/v1/agents/{v1['id']}"
    url = f"/v1/agents/{v1['id']}"
    r = await client.patch(url, json={"system_prompt": "v2 prompt", "llm": {"max_tokens": 99}}, headers=admin)
    v2 = await ok(r)
    assert v2["version"] == 2 and r.headers["etag"] == '"2"'
    assert v2["llm"] == {**v1["llm"], "max_tokens": 99}  # nested objects merge
    assert v2["created_at"] == v1["created_at"] and v2["updated_at"] > v1["updated_at"]
    v3 = await ok(await client.put(url, json={"name": "Desk", "first_message": None}, headers=admin))
    assert v3["version"] == 3 and v3["system_prompt"] != "v2 prompt" and v3["llm"]["temperature"] == 0.6
    assert v3["first_message"] is None

    versions = await ok(await client.get(f"{url}/versions", headers=admin))
    assert [v["version"] for v in versions["items"]] == [3, 2, 1]
    old = await ok(await client.get(f"{url}/versions/1", headers=admin))
    assert old["system_prompt"] == "v1 prompt" and old["llm"]["temperature"] == 0.2 and old["agent_id"] == v1["id"]
    problem(await client.get(f"{url}/versions/9", headers=admin), 404)

    v4 = await ok(await client.post(f"{url}/versions/1/restore", headers=admin))
    assert v4["version"] == 4 and v4["system_prompt"] == "v1 prompt" and v4["llm"] == v1["llm"]

    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await conn.execute("UPDATE agent_versions SET config = '{}' WHERE agent_id = $1", v1["id"])
    finally:
        await conn.close()
    assert (await ok(await client.get(f"{url}/versions/1", headers=admin)))["system_prompt"] == "v1 prompt"

    r = await client.patch(url, json={"name": None}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.name"


async def test_optimistic_concurrency(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    agent = await ok(await client.post("/v1/agents", json={"name": "cc"}, headers=admin), 201)
    url = f"/v1/agents/{agent['id']}"
    problem(await client.patch(url, json={"name": "a"}, headers={**admin, "If-Match": '"7"'}), 412)
    problem(await client.patch(url, json={"name": "a"}, headers={**admin, "If-Match": "junk"}), 412)
    problem(await client.patch(url, json={"name": "a", "version": 7}, headers=admin), 409)
    await ok(await client.patch(url, json={"name": "a"}, headers={**admin, "If-Match": '"1"'}))
    await ok(await client.patch(url, json={"name": "b", "version": 2}, headers=admin))

    # two writers who both read version 3: exactly one wins
    results = await asyncio.gather(
        *(client.patch(url, json={"name": f"writer {i}"}, headers={**admin, "If-Match": '"3"'}) for i in range(2))
    )
    assert sorted(r.status_code for r in results) == [200, 412]
    results = await asyncio.gather(
        *(client.put(url, json={"name": f"writer {i}", "version": 4}, headers=admin) for i in range(3))
    )
    assert sorted(r.status_code for r in results) == [200, 409, 409]
    # without a precondition, concurrent updates serialise into consecutive versions
    await asyncio.gather(*(client.patch(url, json={"voice": f"v{i}"}, headers=admin) for i in range(4)))
    versions = await ok(await client.get(f"{url}/versions", headers=admin))
    assert [v["version"] for v in versions["items"]] == list(range(9, 0, -1))
    problem(await client.delete(url, headers={**admin, "If-Match": '"1"'}), 412)


async def test_supervisors_own_their_agents(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    sup, admin = bearer(tenant.sup_jwt), bearer(tenant.admin_key)
    mine = await ok(await client.post("/v1/agents", json={"name": "mine"}, headers=sup), 201)
    assert mine["owner_user_id"] == tenant.sup_user
    theirs = await ok(
        await client.post("/v1/agents", json={"name": "theirs", "owner_user_id": tenant.sup2_user}, headers=admin), 201
    )
    problem(await client.get(f"/v1/agents/{theirs['id']}", headers=sup), 404)
    r = await client.post("/v1/agents", json={"name": "x", "owner_user_id": tenant.sup2_user}, headers=sup)
    problem(r, 403)
    problem(await client.patch(f"/v1/agents/{mine['id']}", json={"owner_user_id": tenant.sup2_user}, headers=sup), 403)
    listed = await ok(await client.get("/v1/agents", params={"limit": 200}, headers=sup))
    assert {a["owner_user_id"] for a in listed["items"]} == {tenant.sup_user}
    moved = await ok(
        await client.patch(f"/v1/agents/{mine['id']}", json={"owner_user_id": tenant.sup2_user}, headers=admin)
    )
    assert moved["owner_user_id"] == tenant.sup2_user
    problem(await client.get(f"/v1/agents/{mine['id']}", headers=sup), 404)
    r = await client.post("/v1/agents", json={"owner_user_id": "f" * 32}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.owner_user_id"


async def test_agent_delete_keeps_versions_and_is_refused_while_numbers_route_to_it(
    client: httpx.AsyncClient, tenant: TenantCreds
) -> None:
    admin = bearer(tenant.admin_key)
    agent = await ok(await client.post("/v1/agents", json={"name": "del"}, headers=admin), 201)
    number = await ok(
        await client.post(
            "/v1/phone-numbers", json={"number": unique_number(), "agent_id": agent["id"]}, headers=admin
        ),
        201,
    )
    problem(await client.delete(f"/v1/agents/{agent['id']}", headers=admin), 409)
    await ok(await client.delete(f"/v1/phone-numbers/{number['id']}", headers=admin), 204)
    await ok(await client.delete(f"/v1/agents/{agent['id']}", headers=admin), 204)
    problem(await client.get(f"/v1/agents/{agent['id']}", headers=admin), 404)
    problem(await client.delete(f"/v1/agents/{agent['id']}", headers=admin), 404)
    r = await client.post("/v1/phone-numbers", json={"number": unique_number(), "agent_id": agent["id"]}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.agent_id"


async def test_list_filters_and_pagination(client: httpx.AsyncClient) -> None:
    t = await populate(client, "paging")
    admin = bearer(t.admin_key)
    ids = [
        (
            await ok(
                await client.post("/v1/agents", json={"name": f"page {i}", "is_active": i % 2 == 0}, headers=admin), 201
            )
        )["id"]
        for i in range(5)
    ]
    first = await ok(await client.get("/v1/agents", params={"limit": 2}, headers=admin))
    assert [a["id"] for a in first["items"]] == ids[:2] and first["has_more"]
    last = await ok(await client.get("/v1/agents", params={"limit": 2, "offset": 4}, headers=admin))
    assert [a["id"] for a in last["items"]] == ids[4:] and not last["has_more"]
    active = await ok(await client.get("/v1/agents", params={"is_active": "true"}, headers=admin))
    assert [a["id"] for a in active["items"]] == ids[0::2]
    named = await ok(await client.get("/v1/agents", params={"name": "PAGE 3"}, headers=admin))
    assert [a["id"] for a in named["items"]] == [ids[3]]
    sups = await ok(await client.get("/v1/users", params={"role": "supervisor"}, headers=admin))
    assert {u["id"] for u in sups["items"]} == {t.sup_user, t.sup2_user}


# ------------------------------------------------------------------ phone numbers
async def test_phone_numbers_are_e164_unique_and_reassignable(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    other = await populate(client, "numbers-other")
    agent = await ok(await client.post("/v1/agents", json={"name": "n"}, headers=admin), 201)
    agent2 = await ok(await client.post("/v1/agents", json={"name": "n2"}, headers=admin), 201)
    digits = unique_number()
    pretty = f"{digits[:2]} ({digits[2:5]}) {digits[5:8]}-{digits[8:]}"
    created = await ok(
        await client.post("/v1/phone-numbers", json={"number": pretty, "agent_id": agent["id"]}, headers=admin), 201
    )
    assert created["number"] == digits
    for bad in ("4155550100", "+1 415", "+999123456789", "tel:+14155550100"):
        r = await client.post("/v1/phone-numbers", json={"number": bad, "agent_id": agent["id"]}, headers=admin)
        assert problem(r, 422)["errors"][0]["field"] == "body.number", bad
    r = await client.post("/v1/phone-numbers", json={"number": digits, "agent_id": agent["id"]}, headers=admin)
    problem(r, 409)
    other_agent = await ok(await client.post("/v1/agents", json={"name": "o"}, headers=bearer(other.admin_key)), 201)
    r = await client.post(
        "/v1/phone-numbers", json={"number": digits, "agent_id": other_agent["id"]}, headers=bearer(other.admin_key)
    )
    problem(r, 409)  # unique across the platform
    r = await client.post(
        "/v1/phone-numbers", json={"number": unique_number(), "agent_id": other_agent["id"]}, headers=admin
    )
    assert problem(r, 422)["errors"][0]["field"] == "body.agent_id"

    found = await ok(await client.get("/v1/phone-numbers", params={"number": pretty}, headers=admin))
    assert [n["id"] for n in found["items"]] == [created["id"]]
    moved = await ok(
        await client.patch(
            f"/v1/phone-numbers/{created['id']}", json={"agent_id": agent2["id"]}, headers={**admin, "If-Match": '"1"'}
        )
    )
    assert moved["agent_id"] == agent2["id"] and moved["version"] == 2
    by_agent = await ok(await client.get("/v1/phone-numbers", params={"agent_id": agent2["id"]}, headers=admin))
    assert [n["id"] for n in by_agent["items"]] == [created["id"]]


# ------------------------------------------------------------------ calls
async def test_calls_list_filters_and_detail_with_ordered_turns(
    client: httpx.AsyncClient, tenant: TenantCreds, database_url: str
) -> None:
    admin, sup = bearer(tenant.admin_key), bearer(tenant.sup_jwt)
    agent = await ok(await client.post("/v1/agents", json={"name": "calls"}, headers=sup), 201)
    other = await ok(await client.post("/v1/agents", json={"name": "calls other"}, headers=admin), 201)
    number = unique_number()
    t0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    turns = [  # written out of order, as redeliveries may
        {
            "turn_id": "t1",
            "speaker": "agent",
            "text": "Sure, when?",
            "started_at": t0 + timedelta(seconds=6),
            "ended_at": t0 + timedelta(seconds=7),
            "latency": {"stt_ms": 150.0, "voice_to_voice_ms": 812.5},
        },
        {
            "turn_id": "t0",
            "speaker": "agent",
            "text": "Hello!",
            "started_at": t0 + timedelta(seconds=1),
            "ended_at": t0 + timedelta(seconds=2),
            "latency": {},
        },
        {
            "turn_id": "t1",
            "speaker": "caller",
            "text": "Move my appointment",
            "started_at": t0 + timedelta(seconds=3),
            "ended_at": t0 + timedelta(seconds=5),
        },
        {
            "turn_id": "t2",
            "speaker": "agent",
            "text": "Tuesd",
            "started_at": t0 + timedelta(seconds=9),
            "ended_at": t0 + timedelta(seconds=9.5),
            "interrupted": True,
            "latency": {"voice_to_voice_ms": 700},
        },
    ]
    call_id = await insert_call(
        database_url,
        tenant_id=tenant.id,
        agent_id=agent["id"],
        agent_version=1,
        to_number=number,
        started_at=t0,
        turns=turns,
    )
    live = await insert_call(
        database_url,
        tenant_id=tenant.id,
        agent_id=other["id"],
        status="in_progress",
        started_at=t0 + timedelta(hours=1),
    )

    detail = await ok(await client.get(f"/v1/calls/{call_id}", headers=admin))
    assert detail["status"] == "ended" and detail["agent_id"] == agent["id"] and detail["agent_version"] == 1
    assert detail["duration_s"] == 42.0 and detail["end_reason"] == "caller_hangup" and detail["ended_at"]
    assert [(t["turn_id"], t["speaker"]) for t in detail["turns"]] == [
        ("t0", "agent"),
        ("t1", "caller"),
        ("t1", "agent"),
        ("t2", "agent"),
    ]
    reply = detail["turns"][2]
    assert reply["latency_ms"] == 812.5 and reply["latency"] == {"stt_ms": 150.0, "voice_to_voice_ms": 812.5}
    assert detail["turns"][1]["latency_ms"] is None and detail["turns"][3]["interrupted"] is True
    assert set(reply) == {
        "turn_id",
        "speaker",
        "text",
        "started_at",
        "ended_at",
        "interrupted",
        "latency_ms",
        "latency",
        "sources",
        "intent",
    }
    assert reply["sources"] == []  # no knowledge retrieved (tests/control_api/test_knowledge.py fills it)
    assert reply["intent"] is None  # no intent matched (tests/control_api/test_intents.py fills it)

    async def ids(**params: Any) -> list[str]:
        body = await ok(await client.get("/v1/calls", params={"limit": 200, **params}, headers=admin))
        return [c["id"] for c in body["items"]]

    window = {"started_after": "2025-03-01T00:00:00Z", "started_before": "2025-03-02T00:00:00Z"}
    assert await ids(**window) == [live, call_id]  # newest first
    assert await ids(status="ended", **window) == [call_id]
    assert await ids(status="in_progress", **window) == [live]
    assert await ids(agent_id=agent["id"]) == [call_id]
    assert await ids(number=number) == [call_id]
    assert await ids(started_after="2025-03-01T10:30:00+00:00", started_before="2025-03-02T00:00:00") == [live]
    problem(await client.get("/v1/calls", params={"status": "bogus"}, headers=admin), 422)

    # the supervisor sees the calls of their own agents only
    problem(await client.get(f"/v1/calls/{live}", headers=sup), 404)
    mine = await ok(await client.get("/v1/calls", params={"limit": 200, **window}, headers=sup))
    assert [c["id"] for c in mine["items"]] == [call_id]


# ------------------------------------------------------------------ users, webhooks, audit, tenants
async def test_users_crud(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    user = await ok(
        await client.post(
            "/v1/users",
            json={"email": "Crud.User@Example.com", "password": "long enough", "role": "supervisor"},
            headers=admin,
        ),
        201,
    )
    assert user["email"] == "crud.user@example.com" and "password" not in str(user)
    r = await client.post(
        "/v1/users", json={"email": "crud.user@example.com", "password": "long enough"}, headers=admin
    )
    problem(r, 409)
    r = await client.post("/v1/users", json={"email": "not-an-email", "password": "long enough"}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.email"
    updated = await ok(
        await client.patch(
            f"/v1/users/{user['id']}", json={"name": "Crud", "role": "admin"}, headers={**admin, "If-Match": '"1"'}
        )
    )
    assert updated["role"] == "admin" and updated["version"] == 2
    await ok(await client.delete(f"/v1/users/{user['id']}", headers=admin), 204)
    problem(await client.get(f"/v1/users/{user['id']}", headers=admin), 404)


async def test_webhooks_secret_shown_on_create_and_rotate_only(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    hook = await ok(
        await client.post(
            "/v1/webhooks",
            json={"url": "https://hooks.example.com/v", "events": ["call.ended", "analytics.summary"]},
            headers=admin,
        ),
        201,
    )
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["analytics.summary", "call.ended"]
    got = await ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=admin))
    assert "secret" not in got
    rotated = await ok(await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=admin))
    assert rotated["secret"] != hook["secret"]
    for bad in (
        {"url": "ftp://x.example/h", "events": ["*"]},
        {"url": "https://x.example/h", "events": []},
        {"url": "https://x.example/h", "events": ["nope"]},
        {"url": "https://user:pw@x.example/h", "events": ["*"]},
    ):
        problem(await client.post("/v1/webhooks", json=bad, headers=admin), 422)
    patched = await ok(
        await client.patch(f"/v1/webhooks/{hook['id']}", json={"is_active": False, "events": ["*"]}, headers=admin)
    )
    assert patched["events"] == ["*"] and not patched["is_active"] and "secret" not in patched
    filtered = await ok(await client.get("/v1/webhooks", params={"event": "*"}, headers=admin))
    assert [h["id"] for h in filtered["items"]] == [hook["id"]]
    await ok(await client.delete(f"/v1/webhooks/{hook['id']}", headers=admin), 204)


async def test_audit_log_records_who_changed_what_without_values(client: httpx.AsyncClient) -> None:
    t = await populate(client, "audit")
    agent = await ok(await client.post("/v1/agents", json={"name": "aud"}, headers=bearer(t.sup_jwt)), 201)
    await ok(
        await client.patch(
            f"/v1/agents/{agent['id']}", json={"system_prompt": "secret prompt words"}, headers=bearer(t.admin_jwt)
        )
    )
    log = await ok(await client.get("/v1/audit-log", params={"resource_id": agent["id"]}, headers=bearer(t.admin_key)))
    entries = log["items"]
    assert [e["action"] for e in entries] == ["agent.update", "agent.create"]
    assert entries[0]["actor_type"] == "user" and entries[0]["actor_id"] == t.admin_user
    assert entries[0]["details"] == {"fields": ["system_prompt"], "version": 2}
    assert entries[1]["actor_id"] == t.sup_user and entries[0]["request_id"]
    assert "secret prompt" not in str(log)
    everything = await ok(await client.get("/v1/audit-log", params={"limit": 200}, headers=bearer(t.admin_key)))
    actions = {e["action"] for e in everything["items"]}
    assert {"tenant.create", "api_key.create", "user.create", "agent.create", "agent.update"} <= actions
    only = await ok(await client.get("/v1/audit-log", params={"action": "user.create"}, headers=bearer(t.admin_key)))
    assert len(only["items"]) == 3
    problem(await client.get("/v1/audit-log", headers=bearer(t.sup_jwt)), 403)


async def test_tenant_rename_with_if_match(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    admin = bearer(tenant.admin_key)
    r = await client.get(f"/v1/tenants/{tenant.id}", headers=admin)
    etag = r.headers["etag"]
    renamed = await ok(
        await client.patch(f"/v1/tenants/{tenant.id}", json={"name": "Renamed"}, headers={**admin, "If-Match": etag})
    )
    assert renamed["name"] == "Renamed"
    problem(
        await client.patch(f"/v1/tenants/{tenant.id}", json={"name": "Again"}, headers={**admin, "If-Match": etag}), 412
    )


# ------------------------------------------------------------------ migrations
async def test_migrations_apply_from_empty_once_and_concurrently(postgres_server: str) -> None:
    names = [f"voice_ctl_mig{i}_{os.getpid()}" for i in range(2)]
    admin = await asyncpg.connect(f"{postgres_server}/postgres")
    try:
        for n in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
    finally:
        await admin.close()
    expected = [name for name, _ in db.migration_files()]
    assert "0002_control.sql" in expected
    pools: list[asyncpg.Pool] = []
    try:
        pool = await db.connect(f"{postgres_server}/{names[0]}")  # creates the database, applies everything
        pools.append(pool)
        applied = [r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        assert applied == expected
        assert await db.migrate(pool) == []  # re-run: nothing to do
        tables = {r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"tenants", "platform_secrets", *TENANT_TABLES} <= tables
        # two replicas starting at once against an empty database
        dsn = f"{postgres_server}/{names[1]}"
        await db.ensure_database(dsn)
        racers = [await asyncpg.create_pool(dsn, min_size=1, max_size=2) for _ in range(2)]
        pools.extend(p for p in racers if p is not None)
        results = await asyncio.gather(*(db.migrate(p) for p in racers if p is not None))
        assert sorted(results, key=len) == [[], expected]
    finally:
        for p in pools:
            await p.close()
        admin = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            for n in names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_unexpected_errors_are_500_problems_with_the_request_id(
    client: httpx.AsyncClient, tenant: TenantCreds, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voice_control_api.store import webhooks

    async def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("database exploded")

    monkeypatch.setattr(webhooks, "list_", boom)
    r = await client.get("/v1/webhooks", headers={**bearer(tenant.admin_key), "X-Request-Id": "req-500"})
    body = problem(r, 500)
    assert body["request_id"] == "req-500" == r.headers["x-request-id"]
    assert "exploded" not in r.text


async def test_oversized_bodies_are_refused(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    r = await client.post(
        "/v1/agents",
        content=b"{" + b" " * (1024 * 1024) + b"}",
        headers={**bearer(tenant.admin_key), "content-type": "application/json"},
    )
    problem(r, 413)


async def test_chunked_bodies_are_limited_by_the_bytes_read(client: httpx.AsyncClient, tenant: TenantCreds) -> None:
    """No Content-Length (chunked transfer): the limit applies to the bytes actually received."""
    headers = {**bearer(tenant.admin_key), "content-type": "application/json"}

    async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    name = f"chunked-{uuid.uuid4().hex[:8]}"
    big = b'{"name": "' + name.encode() + b'"' + b" " * (1024 * 1024) + b"}"
    r = await client.post("/v1/agents", content=chunks(big), headers=headers)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert "1048576" in problem(r, 413)["detail"]
    listed = await ok(await client.get("/v1/agents", params={"name": name}, headers=bearer(tenant.admin_key)))
    assert listed["items"] == []  # refused, not created

    small = b'{"name": "' + name.encode() + b'"' + b" " * 200_000 + b"}"
    created = await ok(await client.post("/v1/agents", content=chunks(small), headers=headers), 201)
    assert created["name"] == name
    # a Content-Length that understates the body does not let the rest through either
    r = await client.post("/v1/agents", content=chunks(big), headers={**headers, "content-length": "10"})
    problem(r, 413)
