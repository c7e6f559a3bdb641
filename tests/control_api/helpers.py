"""Helpers for the control-api tests: credentials, a two-tenant world, direct database writes."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

BOOTSTRAP_KEY = "test-bootstrap-" + secrets.token_hex(12)
SECRETS_KEY = base64.b64encode(secrets.token_bytes(32)).decode()  # seals tenant secrets (SECRETS_KEY)
PASSWORD = "correct horse battery staple"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique_number() -> str:
    """A possible US number (+1 415 5xx xxxx) unlikely to collide within a session."""
    return "+1415" + str(secrets.randbelow(9_000_000) + 1_000_000)


def unique_email(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 201, 204)) -> Any:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    return response.json() if response.content else None


# every table whose rows belong to one tenant (a tenant_id column)
TENANT_TABLES = (
    "users",
    "api_keys",
    "refresh_tokens",
    "agents",
    "agent_versions",
    "phone_numbers",
    "webhooks",
    "tenant_secrets",
    "calls",
    "call_turns",
    "audit_log",
    "transfer_allow_list",
    "sip_trunks",
    "outbound_allow_list",
    "knowledge_bases",
    "knowledge_documents",
    "knowledge_chunks",
    "knowledge_words",
)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """The problem+json body of ``r``, which must answer ``status``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


@dataclass
class TenantCreds:
    """One tenant with an admin key, an admin and two supervisors (logged in), and a supervisor key."""

    id: str
    admin_key: str
    admin_user: str = ""
    admin_jwt: str = ""
    sup_user: str = ""
    sup_jwt: str = ""
    sup_refresh: str = ""
    sup2_user: str = ""
    sup_key: str = ""
    sup_email: str = ""
    resources: dict[str, str] = field(default_factory=dict)

    def token(self, role: str) -> str:
        return {
            "admin_key": self.admin_key,
            "admin_jwt": self.admin_jwt,
            "sup_jwt": self.sup_jwt,
            "sup_key": self.sup_key,
        }[role]


async def create_tenant(client: httpx.AsyncClient, name: str) -> TenantCreds:
    body = await ok(await client.post("/v1/tenants", json={"name": name}, headers=bearer(BOOTSTRAP_KEY)), 201)
    return TenantCreds(id=body["id"], admin_key=body["admin_api_key"])


async def create_user(client: httpx.AsyncClient, admin_key: str, role: str, tag: str = "u") -> dict[str, Any]:
    email = unique_email(tag)
    body = await ok(
        await client.post(
            "/v1/users",
            json={"email": email, "role": role, "password": PASSWORD, "name": tag},
            headers=bearer(admin_key),
        ),
        201,
    )
    return {**body, "email": email}


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    return await ok(await client.post("/v1/auth/login", json={"email": email, "password": password}), 200)  # type: ignore[no-any-return]


async def populate(client: httpx.AsyncClient, name: str) -> TenantCreds:
    t = await create_tenant(client, name)
    admin = await create_user(client, t.admin_key, "admin", "admin")
    sup = await create_user(client, t.admin_key, "supervisor", "sup")
    sup2 = await create_user(client, t.admin_key, "supervisor", "sup2")
    t.admin_user, t.sup_user, t.sup2_user, t.sup_email = admin["id"], sup["id"], sup2["id"], sup["email"]
    t.admin_jwt = (await login(client, admin["email"]))["access_token"]
    tokens = await login(client, sup["email"])
    t.sup_jwt, t.sup_refresh = tokens["access_token"], tokens["refresh_token"]
    key = await ok(
        await client.post(
            "/v1/api-keys",
            json={"name": "sup", "role": "supervisor", "user_id": sup["id"]},
            headers=bearer(t.admin_key),
        ),
        201,
    )
    t.sup_key = key["key"]
    t.resources["api_key"] = key["id"]
    return t


async def insert_call(
    database_url: str,
    *,
    tenant_id: str,
    agent_id: str,
    agent_version: int = 1,
    to_number: str | None = None,
    status: str = "ended",
    started_at: datetime | None = None,
    turns: list[dict[str, Any]] | None = None,
) -> str:
    """Write a call the way analytics does (the call path is another issue)."""
    call_id = "CA" + uuid.uuid4().hex
    started = started_at or datetime.now(UTC) - timedelta(minutes=5)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO calls (id, tenant_id, agent_id, agent_version, channel, from_number, to_number, status,
                                   started_at, answered_at, ended_at, end_reason, duration_s)
                VALUES ($1, $2, $3, $4, 'twilio', '+14155550199', $5, $6, $7, $7, $8, $9, $10)
                """,
                call_id,
                tenant_id,
                agent_id,
                agent_version,
                to_number,
                status,
                started,
                started + timedelta(seconds=42) if status == "ended" else None,
                "caller_hangup" if status == "ended" else None,
                42.0 if status == "ended" else None,
            )
            for t in turns or []:
                await conn.execute(
                    """
                    INSERT INTO call_turns (call_id, tenant_id, turn_id, speaker, text, started_at, ended_at,
                                            interrupted, latency_ms)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
                    """,
                    call_id,
                    tenant_id,
                    t["turn_id"],
                    t["speaker"],
                    t["text"],
                    t.get("started_at"),
                    t.get("ended_at"),
                    t.get("interrupted", False),
                    json.dumps(t["latency"]) if t.get("latency") is not None else None,
                )
    finally:
        await conn.close()
    return call_id
