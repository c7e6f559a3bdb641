"""Every route x every role x another tenant's credentials.

The routes come from the OpenAPI document; a route without an entry in ``CASES`` fails the test, so a
new route cannot ship without an isolation check. For every route:

- same tenant: each role (admin key, admin login, supervisor login, supervisor key) gets the expected
  status; supervisors get a plain 404 for resources they do not own;
- another tenant: each of its credentials (and a platform admin from a third tenant), pointed at this
  tenant's resources, gets exactly the answer it gets for ids that do not exist (403 or 404 for items,
  a 4xx for creates that reference them), and lists never contain this tenant's ids;
- no credentials, or a bogus one: 401;
- after every attempt that must not touch this tenant (no credentials, another tenant's), its data is read
  back from PostgreSQL and KV and compared: an answer that looks right but changed data fails;
- public routes (the OpenAPI document declares no security for them) answer without credentials as
  documented, and the same with any tenant's credentials attached (a bearer token neither grants nor changes
  anything there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from nats.js.errors import KeyNotFoundError
from voice_control_api.service import ControlApiService
from voice_schemas import subjects

from .helpers import (
    BOOTSTRAP_KEY,
    PASSWORD,
    TENANT_TABLES,
    TenantCreds,
    bearer,
    insert_call,
    ok,
    unique_email,
    unique_number,
)

pytestmark = pytest.mark.integration

ROLES = ("admin_key", "admin_jwt", "sup_jwt", "sup_key")
SUP_ROLES = ("sup_jwt", "sup_key")
Ids = dict[str, str]
Fresh = Callable[[httpx.AsyncClient, TenantCreds, str], Awaitable[Ids]]


STREAM_READ_S = 0.5
SERVED: dict[str, str] = {}  # streamed routes go over real HTTP: the ASGI transport would wait for their end


@dataclass
class Case:
    # upsert: PUT to a name scoped to the caller's tenant (another tenant's PUT writes its own resource)
    kind: Literal["item", "list", "create", "upsert", "self", "public"]
    roles: dict[str, int] = field(default_factory=dict)  # same-tenant expected status per role
    params: dict[str, str] = field(default_factory=dict)  # path param -> resource name (or a literal "=value")
    body: Callable[[Ids], dict[str, Any]] | None = None
    query: Callable[[Ids], dict[str, str]] | None = None
    hidden: dict[str, str] | None = None  # for supervisors: path params of a resource they do not own -> 404
    hidden_in_list: tuple[str, ...] = ()  # resources a supervisor must not see in this list
    fresh: Fresh | None = None  # make a new target per same-tenant call (destructive routes)
    platform: int | None = None  # the platform admin's legitimate status on another tenant's resource
    reason: str = ""
    anonymous: int | None = None  # public routes: the documented answer without credentials, for ``body``
    stream: bool = False  # server-sent events: what arrives in STREAM_READ_S is the body, then the client hangs up
    files: Callable[[Ids], dict[str, Any]] | None = None  # a multipart upload instead of a JSON body


def all_ok(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def admin_only(status: int) -> dict[str, int]:
    return {"admin_key": status, "admin_jwt": status, "sup_jwt": 403, "sup_key": 403}


# ------------------------------------------------------------------ fresh targets for destructive calls
async def fresh_user(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(
        await client.post(
            "/v1/users", json={"email": unique_email("gone"), "password": PASSWORD}, headers=bearer(t.admin_key)
        ),
        201,
    )
    return {"user_id": body["id"]}


async def fresh_key(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(await client.post("/v1/api-keys", json={"name": "gone"}, headers=bearer(t.admin_key)), 201)
    return {"key_id": body["id"]}


async def fresh_agent(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(await client.post("/v1/agents", json={"name": "gone"}, headers=bearer(t.token(role))), 201)
    return {"agent_id": body["id"]}


async def fresh_number(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(
        await client.post(
            "/v1/phone-numbers",
            json={"number": unique_number(), "agent_id": t.resources["agent_sup"]},
            headers=bearer(t.admin_key),
        ),
        201,
    )
    return {"number_id": body["id"]}


async def fresh_webhook(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(
        await client.post(
            "/v1/webhooks", json={"url": "https://h.example.com/x", "events": ["*"]}, headers=bearer(t.admin_key)
        ),
        201,
    )
    return {"webhook_id": body["id"]}


async def fresh_knowledge_base(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    name = "gone " + uuid.uuid4().hex
    body = await ok(await client.post("/v1/knowledge-bases", json={"name": name}, headers=bearer(t.admin_key)), 201)
    return {"knowledge_base_id": body["id"]}


async def fresh_knowledge_document(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(
        await client.post(
            f"/v1/knowledge-bases/{t.resources['knowledge_base']}/documents",
            files={"file": ("gone.txt", b"Soon gone.", "text/plain")},
            headers=bearer(t.admin_key),
        ),
        201,
    )
    return {"document_id": body["id"]}


_DATABASE: dict[str, str] = {}  # the session's database, for fresh targets written the way analytics writes them


@pytest.fixture(autouse=True)
def _database(database_url: str) -> None:
    _DATABASE["url"] = database_url


async def fresh_call(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    return {"call_id": await insert_call(_DATABASE["url"], tenant_id=t.id, agent_id=t.resources["agent_sup"])}


async def fresh_secret(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    name = "gone_" + uuid.uuid4().hex[:12]
    await ok(await client.put(f"/v1/secrets/{name}", json={"value": "v-" + name}, headers=bearer(t.admin_key)))
    return {"name": name}


async def fresh_trunk(client: httpx.AsyncClient, t: TenantCreds, role: str) -> Ids:
    body = await ok(
        await client.post("/v1/sip-trunks", json={"name": "gone " + uuid.uuid4().hex}, headers=bearer(t.admin_key)),
        201,
    )
    return {"trunk_id": body["id"]}


AGENT = {"agent_id": "agent_sup"}
HIDDEN_AGENT = {"agent_id": "agent_admin"}
KNOWLEDGE_BASE = {"knowledge_base_id": "knowledge_base"}

CASES: dict[tuple[str, str], Case] = {
    # auth
    ("POST", "/v1/auth/login"): Case(
        "public",
        reason="authenticates by email and password, not by a credential",
        body=lambda ids: {"email": ids["sup_email"], "password": "wrong-password"},
        anonymous=401,
    ),
    ("POST", "/v1/auth/refresh"): Case(
        "public",
        reason="authenticates by the refresh token in the body",
        body=lambda ids: {"refresh_token": "vr_" + "x" * 43},
        anonymous=401,
    ),
    ("POST", "/v1/auth/logout"): Case(
        "public",
        reason="acts only on the refresh token in the body (an unknown one is ignored)",
        body=lambda ids: {"refresh_token": "vr_" + "x" * 43},
        anonymous=204,
    ),
    ("GET", "/v1/auth/me"): Case("self", all_ok(200)),
    ("POST", "/v1/auth/password"): Case(
        "self", all_ok(403), body=lambda ids: {"current_password": "wrong-password", "new_password": PASSWORD}
    ),
    # tenants
    ("POST", "/v1/tenants"): Case("create", all_ok(403), body=lambda ids: {"name": "t"}, platform=201),
    ("GET", "/v1/tenants"): Case("list", all_ok(200), platform=200),
    ("GET", "/v1/tenants/{tenant_id}"): Case("item", all_ok(200), {"tenant_id": "tenant"}, platform=200),
    ("PATCH", "/v1/tenants/{tenant_id}"): Case(
        "item", admin_only(200), {"tenant_id": "tenant"}, body=lambda ids: {"name": "tenant A"}, platform=200
    ),
    ("GET", "/v1/tenants/{tenant_id}/transfer-allow-list"): Case(
        "item", all_ok(200), {"tenant_id": "tenant"}, platform=200
    ),
    ("PUT", "/v1/tenants/{tenant_id}/transfer-allow-list"): Case(
        "item", admin_only(200), {"tenant_id": "tenant"}, body=lambda ids: {"patterns": ["+4930*"]}, platform=200
    ),
    ("GET", "/v1/tenants/{tenant_id}/outbound-allow-list"): Case(
        "item", all_ok(200), {"tenant_id": "tenant"}, platform=200
    ),
    ("PUT", "/v1/tenants/{tenant_id}/outbound-allow-list"): Case(
        "item", admin_only(200), {"tenant_id": "tenant"}, body=lambda ids: {"patterns": ["+4930*"]}, platform=200
    ),
    # users
    ("POST", "/v1/users"): Case(
        "create", admin_only(201), body=lambda ids: {"email": unique_email(), "password": PASSWORD}
    ),
    ("GET", "/v1/users"): Case("list", admin_only(200)),
    ("GET", "/v1/users/{user_id}"): Case("item", admin_only(200), {"user_id": "user"}),
    ("PATCH", "/v1/users/{user_id}"): Case(
        "item", admin_only(200), {"user_id": "user2"}, body=lambda ids: {"name": "renamed"}
    ),
    ("DELETE", "/v1/users/{user_id}"): Case("item", admin_only(204), {"user_id": "user2"}, fresh=fresh_user),
    # api keys
    ("POST", "/v1/api-keys"): Case(
        "create", admin_only(201), body=lambda ids: {"name": "k", "role": "supervisor", "user_id": ids["user"]}
    ),
    ("GET", "/v1/api-keys"): Case("list", admin_only(200)),
    ("GET", "/v1/api-keys/{key_id}"): Case("item", admin_only(200), {"key_id": "spare_key"}),
    ("DELETE", "/v1/api-keys/{key_id}"): Case("item", admin_only(204), {"key_id": "spare_key"}, fresh=fresh_key),
    # agents
    ("POST", "/v1/agents"): Case("create", all_ok(201), body=lambda ids: {"name": "x", "owner_user_id": ids["user"]}),
    ("GET", "/v1/agents"): Case(
        "list", all_ok(200), hidden_in_list=("agent_admin",), query=lambda ids: {"owner_user_id": ids["user"]}
    ),
    ("GET", "/v1/agents/{agent_id}"): Case("item", all_ok(200), AGENT, hidden=HIDDEN_AGENT),
    ("PUT", "/v1/agents/{agent_id}"): Case(
        "item", all_ok(200), AGENT, body=lambda ids: {"name": "replaced"}, hidden=HIDDEN_AGENT
    ),
    ("PATCH", "/v1/agents/{agent_id}"): Case(
        "item", all_ok(200), AGENT, body=lambda ids: {"name": "patched"}, hidden=HIDDEN_AGENT
    ),
    ("DELETE", "/v1/agents/{agent_id}"): Case("item", all_ok(204), AGENT, hidden=HIDDEN_AGENT, fresh=fresh_agent),
    ("GET", "/v1/agents/{agent_id}/versions"): Case("item", all_ok(200), AGENT, hidden=HIDDEN_AGENT),
    ("GET", "/v1/agents/{agent_id}/versions/{version}"): Case(
        "item", all_ok(200), {**AGENT, "version": "=1"}, hidden={**HIDDEN_AGENT, "version": "=1"}
    ),
    ("POST", "/v1/agents/{agent_id}/versions/{version}/restore"): Case(
        "item", all_ok(200), {**AGENT, "version": "=1"}, hidden={**HIDDEN_AGENT, "version": "=1"}
    ),
    ("GET", "/v1/agents/{agent_id}/deployment"): Case("item", all_ok(200), AGENT, hidden=HIDDEN_AGENT),
    ("GET", "/v1/agents/{agent_id}/intents/stats"): Case("item", all_ok(200), AGENT, hidden=HIDDEN_AGENT),
    ("GET", "/v1/analytics/agents/{agent_id}/intents"): Case("item", all_ok(200), AGENT, hidden=HIDDEN_AGENT),
    # phone numbers
    ("POST", "/v1/phone-numbers"): Case(
        "create", admin_only(201), body=lambda ids: {"number": unique_number(), "agent_id": ids["agent_sup"]}
    ),
    ("GET", "/v1/phone-numbers"): Case(
        "list", all_ok(200), hidden_in_list=("number_admin",), query=lambda ids: {"agent_id": ids["agent_sup"]}
    ),
    ("GET", "/v1/phone-numbers/{number_id}"): Case(
        "item", all_ok(200), {"number_id": "number_sup"}, hidden={"number_id": "number_admin"}
    ),
    ("PATCH", "/v1/phone-numbers/{number_id}"): Case(
        "item", admin_only(200), {"number_id": "number_sup"}, body=lambda ids: {"agent_id": ids["agent_sup"]}
    ),
    ("DELETE", "/v1/phone-numbers/{number_id}"): Case(
        "item", admin_only(204), {"number_id": "number_sup"}, fresh=fresh_number
    ),
    # SIP trunks (tests/control_api/test_sip_trunks.py checks their KV mirror and validation)
    ("POST", "/v1/sip-trunks"): Case(
        "create", admin_only(201), body=lambda ids: {"name": "trunk " + uuid.uuid4().hex}
    ),
    ("GET", "/v1/sip-trunks"): Case("list", admin_only(200)),
    ("GET", "/v1/sip-trunks/{trunk_id}"): Case("item", admin_only(200), {"trunk_id": "trunk"}),
    ("PATCH", "/v1/sip-trunks/{trunk_id}"): Case(
        "item", admin_only(200), {"trunk_id": "trunk"}, body=lambda ids: {"supports_refer": False}
    ),
    ("DELETE", "/v1/sip-trunks/{trunk_id}"): Case("item", admin_only(204), {"trunk_id": "trunk"}, fresh=fresh_trunk),
    # outbound calls: nothing is on the allow-list here (403); tests/e2e/test_outbound_call.py places real ones
    ("POST", "/v1/calls"): Case(
        "create", all_ok(403), body=lambda ids: {"agent_id": ids["agent_sup"], "to": "+14155550100"}
    ),
    # calls
    ("GET", "/v1/calls"): Case(
        "list", all_ok(200), hidden_in_list=("call_admin",), query=lambda ids: {"agent_id": ids["agent_sup"]}
    ),
    ("GET", "/v1/calls/{call_id}"): Case(
        "item", all_ok(200), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"}
    ),
    # not recorded: 404 in its own tenant too (tests/recording downloads a real recording, and checks the other
    # tenant's 404 on it)
    ("GET", "/v1/calls/{call_id}/recording"): Case(
        "item", all_ok(404), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"}
    ),
    ("DELETE", "/v1/calls/{call_id}"): Case("item", admin_only(204), {"call_id": "call_sup"}, fresh=fresh_call),
    # live feed and whisper (tests/control_api/test_live_feed.py follows real calls of two tenants)
    ("GET", "/v1/calls/{call_id}/events"): Case(
        "item", all_ok(200), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"}, stream=True
    ),
    ("GET", "/v1/live/events"): Case("list", all_ok(200), stream=True),
    ("POST", "/v1/calls/{call_id}/whisper"): Case(  # the seeded call is not live: 409 in its own tenant
        "item", all_ok(409), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"},
        body=lambda ids: {"text": "be brief"},
    ),
    # call control (tests/control_api/test_call_control.py ends and transfers real calls of two tenants)
    ("POST", "/v1/calls/{call_id}/end"): Case(  # the seeded call is not live: 409 in its own tenant
        "item", all_ok(409), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"}
    ),
    ("POST", "/v1/calls/{call_id}/transfer"): Case(
        "item", all_ok(409), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"},
        body=lambda ids: {"to": "+493012345678"},
    ),
    # tool calls and supervisor decisions (tests/control_api/test_tool_approvals.py decides on real held calls)
    ("GET", "/v1/calls/{call_id}/tool-calls"): Case(
        "item", all_ok(200), {"call_id": "call_sup"}, hidden={"call_id": "call_admin"}
    ),
    ("POST", "/v1/calls/{call_id}/tool-calls/{tool_call_id}/decision"): Case(  # not live: 409 in its own tenant
        "item", all_ok(409), {"call_id": "call_sup", "tool_call_id": "=tc-none"},
        hidden={"call_id": "call_admin", "tool_call_id": "=tc-none"}, body=lambda ids: {"approved": True},
    ),
    # post-call analytics (tests/control_api/test_analytics_api.py checks the figures)
    ("GET", "/v1/analytics/daily"): Case("list", all_ok(200)),
    ("GET", "/v1/analytics/agents/{agent_id}/daily"): Case("item", all_ok(200), AGENT, hidden=HIDDEN_AGENT),
    ("GET", "/v1/tenants/{tenant_id}/prices"): Case("item", admin_only(200), {"tenant_id": "tenant"}, platform=200),
    ("PUT", "/v1/tenants/{tenant_id}/prices"): Case(
        "item", admin_only(200), {"tenant_id": "tenant"}, body=lambda ids: {"currency": "EUR"}, platform=200
    ),
    # text chats (this deployment has no CALL_TOKEN_KEY and no ingress: tests/e2e/test_chat.py holds real chats)
    ("POST", "/v1/agents/{agent_id}/chats"): Case("item", all_ok(503), AGENT, hidden=HIDDEN_AGENT),
    ("POST", "/v1/chats/{call_id}/messages"): Case(
        "item", all_ok(404), {"call_id": "call_sup"}, body=lambda ids: {"text": "hello"}
    ),
    ("DELETE", "/v1/chats/{call_id}"): Case("item", all_ok(404), {"call_id": "call_sup"}),
    # browser calls (no CALL_TOKEN_KEY and no ingress here: tests/ingress/test_webrtc_signalling.py holds real ones)
    ("POST", "/v1/agents/{agent_id}/web-calls"): Case(
        "item", all_ok(503), AGENT, hidden=HIDDEN_AGENT, body=lambda ids: {"type": "offer", "sdp": "v=0"}
    ),
    ("DELETE", "/v1/web-calls/{call_id}"): Case("item", all_ok(404), {"call_id": "call_sup"}),
    # webhooks
    ("POST", "/v1/webhooks"): Case(
        "create", admin_only(201), body=lambda ids: {"url": "https://h.example.com/y", "events": ["call.ended"]}
    ),
    ("GET", "/v1/webhooks"): Case("list", admin_only(200)),
    ("GET", "/v1/webhooks/{webhook_id}"): Case("item", admin_only(200), {"webhook_id": "webhook"}),
    ("PATCH", "/v1/webhooks/{webhook_id}"): Case(
        "item", admin_only(200), {"webhook_id": "webhook"}, body=lambda ids: {"description": "x"}
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): Case(
        "item", admin_only(204), {"webhook_id": "webhook"}, fresh=fresh_webhook
    ),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): Case("item", admin_only(200), {"webhook_id": "webhook"}),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Case("item", admin_only(200), {"webhook_id": "webhook"}),
    # no delivery exists in this world: tests/control_api/test_webhooks_delivery.py redelivers a real one and checks
    # that another tenant gets 404 for it
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): Case(
        "item", admin_only(404), {"webhook_id": "webhook", "delivery_id": "=msg_none"}
    ),
    # tenant secrets
    ("PUT", "/v1/secrets/{name}"): Case(
        "upsert", admin_only(200), {"name": "secret"}, body=lambda ids: {"value": "replaced-" + uuid.uuid4().hex}
    ),
    ("GET", "/v1/secrets"): Case("list", admin_only(200)),
    ("DELETE", "/v1/secrets/{name}"): Case("item", admin_only(204), {"name": "secret"}, fresh=fresh_secret),
    # knowledge bases (tests/control_api/test_knowledge.py: tenant B's agent never retrieves A's chunks)
    ("POST", "/v1/knowledge-bases"): Case(
        "create", admin_only(201), body=lambda ids: {"name": "kb " + uuid.uuid4().hex}
    ),
    ("GET", "/v1/knowledge-bases"): Case("list", all_ok(200)),
    ("GET", "/v1/knowledge-bases/{knowledge_base_id}"): Case("item", all_ok(200), KNOWLEDGE_BASE),
    ("DELETE", "/v1/knowledge-bases/{knowledge_base_id}"): Case(
        "item", admin_only(204), KNOWLEDGE_BASE, fresh=fresh_knowledge_base
    ),
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/documents"): Case(
        "item", admin_only(201), KNOWLEDGE_BASE,
        files=lambda ids: {"file": ("notes.txt", b"We also sell gift cards.", "text/plain")},
    ),
    ("GET", "/v1/knowledge-bases/{knowledge_base_id}/documents"): Case("item", all_ok(200), KNOWLEDGE_BASE),
    ("DELETE", "/v1/knowledge-bases/{knowledge_base_id}/documents/{document_id}"): Case(
        "item", admin_only(204), {**KNOWLEDGE_BASE, "document_id": "knowledge_document"},
        fresh=fresh_knowledge_document,
    ),
    # audit log
    ("GET", "/v1/audit-log"): Case("list", admin_only(200), query=lambda ids: {"resource_id": ids["agent_sup"]}),
}


def _operations(app: Any) -> list[tuple[str, str]]:
    doc = app.openapi()
    return sorted(
        (m.upper(), p)
        for p, item in doc["paths"].items()
        for m in item
        if m in {"get", "post", "put", "patch", "delete"}
    )


def _path(template: str, params: dict[str, str], ids: Ids) -> str:
    out = template
    for name, ref in params.items():
        out = out.replace("{" + name + "}", ref[1:] if ref.startswith("=") else ids[ref])
    return out


def _random_ids() -> Ids:
    return defaultdict(lambda: uuid.uuid4().hex)


async def _call(
    client: httpx.AsyncClient, method: str, path: str, token: str | None, case: Case, ids: Ids
) -> httpx.Response:
    headers = bearer(token) if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if case.body is not None:
        kwargs["json"] = case.body(ids)
    if case.query is not None:
        kwargs["params"] = case.query(ids)
    if case.files is not None:
        kwargs["files"] = case.files(ids)
    if not case.stream:
        return await client.request(method, path, **kwargs)
    async with httpx.AsyncClient(base_url=SERVED["url"], timeout=10.0) as real, real.stream(
        method, path, **kwargs
    ) as r:
        chunks: list[bytes] = []
        if r.status_code < 300:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STREAM_READ_S):
                    async for chunk in r.aiter_bytes():
                        chunks.append(chunk)
        else:
            chunks.append(await r.aread())
    return httpx.Response(r.status_code, headers=r.headers, content=b"".join(chunks), request=r.request)


def _detail(r: httpx.Response) -> Any:
    if r.headers.get("content-type", "").startswith("application/problem+json"):
        return r.json().get("detail")
    return None


async def tenant_state(database_url: str, service: ControlApiService, tenant_id: str) -> dict[str, Any]:
    """Everything the tenant holds: its rows in PostgreSQL (a key's last use aside) and its keys in KV."""
    conn = await asyncpg.connect(database_url)
    try:
        state: dict[str, Any] = {
            "tenants": await conn.fetchval("SELECT to_jsonb(t)::text FROM tenants t WHERE id = $1", tenant_id)
        }
        for table in TENANT_TABLES:
            rows = await conn.fetch(
                f"SELECT (to_jsonb(t) - 'last_used_at')::text AS row FROM {table} t WHERE tenant_id = $1", tenant_id
            )
            state[table] = sorted(r["row"] for r in rows)
        keys = [
            ("agents", subjects.agent_key(r["id"]))
            for r in await conn.fetch("SELECT id FROM agents WHERE tenant_id = $1", tenant_id)
        ]
        keys += [
            ("numbers", subjects.number_key(r["number"]))
            for r in await conn.fetch("SELECT number FROM phone_numbers WHERE tenant_id = $1", tenant_id)
        ]
        keys += [
            ("secrets", subjects.secret_key(tenant_id, r["name"]))
            for r in await conn.fetch("SELECT name FROM tenant_secrets WHERE tenant_id = $1", tenant_id)
        ]
        keys += [
            ("trunks", subjects.trunk_key(r["id"]))
            for r in await conn.fetch("SELECT id FROM sip_trunks WHERE tenant_id = $1", tenant_id)
        ]
    finally:
        await conn.close()
    for bucket, key in keys:
        try:
            entry = await service.kv[bucket].get(key)
            state[f"kv {bucket} {key}"] = entry.value
        except KeyNotFoundError:
            state[f"kv {bucket} {key}"] = None
    return state


def test_every_route_has_an_isolation_check(service: Any) -> None:
    ops = _operations(service.test_app)
    missing = [op for op in ops if op not in CASES]
    stale = [op for op in CASES if op not in ops]
    assert not missing, f"routes without an isolation check: {missing}"
    assert not stale, f"isolation checks for routes that no longer exist: {stale}"
    doc = service.test_app.openapi()
    for op, case in CASES.items():
        operation = doc["paths"][op[1]][op[0].lower()]
        if case.kind == "public":
            assert case.reason and case.anonymous is not None, op
            assert "security" not in operation, (op, "a public route must be documented without security")
            assert str(case.anonymous) in operation["responses"], (op, "its answer must be documented")
        else:
            assert set(case.roles) == set(ROLES), op
            assert operation.get("security") == [{"bearer": []}], op


@pytest.mark.parametrize("op", sorted(CASES), ids=lambda op: f"{op[0]} {op[1]}")
async def test_route_isolation(
    op: tuple[str, str],
    client: httpx.AsyncClient,
    service: ControlApiService,
    database_url: str,
    world: dict[str, TenantCreds],
    server: str,
) -> None:
    method, template = op
    case = CASES[op]
    SERVED["url"] = server
    a, b = world["A"], world["B"]

    async def unchanged(before: dict[str, Any], *why: object) -> None:
        after = await tenant_state(database_url, service, a.id)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, (op, *why, "changed tenant A's data", changed)

    before = await tenant_state(database_url, service, a.id)
    if case.kind == "public":
        await _check_public(client, op, case, a, b)
        await unchanged(before, "public route")
        return

    # -------- no or bogus credentials
    for token in (None, "vk_abcdefgh_" + "x" * 43, "eyJhbGciOiJIUzI1NiJ9.e30.bogus", "garbage-token"):
        r = await _call(client, method, _path(template, case.params, a.resources), token, case, a.resources)
        assert r.status_code == 401, (op, token, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        await unchanged(before, token)

    # -------- same tenant, every role
    for role in ROLES:
        params = await case.fresh(client, a, role) if case.fresh else {}
        path = _path(template, {k: v for k, v in case.params.items() if k not in params}, a.resources)
        path = _path(path, {k: "=" + v for k, v in params.items()}, a.resources)
        r = await _call(client, method, path, a.token(role), case, a.resources)
        assert r.status_code == case.roles[role], (op, role, r.status_code, r.text)
        if r.status_code < 300 and r.content:
            body = {} if case.stream else r.json()  # an event stream: its text is checked below
            if case.kind in ("create", "upsert") and "tenant_id" in body:
                assert body["tenant_id"] == a.id
            if case.kind == "self":
                assert body["tenant_id"] == a.id
            if role in SUP_ROLES:
                for hidden in case.hidden_in_list:
                    assert a.resources[hidden] not in r.text, (op, role, hidden)
        if role in SUP_ROLES and case.hidden:
            r = await _call(client, method, _path(template, case.hidden, a.resources), a.token(role), case, a.resources)
            expected = 403 if case.roles[role] == 403 else 404
            assert r.status_code == expected, (op, role, "not owned", r.status_code, r.text)

    # -------- another tenant's credentials (and a platform admin of a third tenant) on A's resources
    a_ids = {v for v in a.resources.values()} | {a.id, a.admin_user, a.sup_user, a.sup2_user}
    others = {f"B {role}": b.token(role) for role in ROLES} | {"platform admin": BOOTSTRAP_KEY}
    before = await tenant_state(database_url, service, a.id)
    for who, token in others.items():
        real = await _call(client, method, _path(template, case.params, a.resources), token, case, a.resources)
        if who == "platform admin" and case.platform is not None:
            assert real.status_code == case.platform, (op, who, real.status_code, real.text)
            before = await tenant_state(database_url, service, a.id)  # a legitimate change
            continue
        await _check_other_tenant(client, op, case, who, token, real, a, a_ids)
        await unchanged(before, who)


async def _check_other_tenant(
    client: httpx.AsyncClient,
    op: tuple[str, str],
    case: Case,
    who: str,
    token: str,
    real: httpx.Response,
    a: TenantCreds,
    a_ids: set[str],
) -> None:
    """The answer another tenant's credential ``token`` got (``real``) for A's resource of route ``op``."""
    method, template = op
    if case.kind == "self":
        assert real.status_code in (200, 403), (op, who, real.status_code)
        if real.status_code == 200:
            assert real.json()["tenant_id"] != a.id
        return
    if case.kind == "list":
        assert real.status_code in (200, 403), (op, who, real.status_code, real.text)
        leaked = [i for i in a_ids if i in real.text]
        assert not leaked, (op, who, "leaks", leaked)
        return
    fake_ids = _random_ids()
    fake = await _call(client, method, _path(template, case.params, fake_ids), token, case, fake_ids)
    if case.kind == "upsert":
        # the name is the caller's own: it wrote (and now removes) its own resource, never A's
        me = await ok(await client.get("/v1/auth/me", headers=bearer(token)))
        for r in (real, fake):
            if r.status_code < 300:
                assert r.json()["tenant_id"] == me["tenant_id"] != a.id, (op, who, r.text)
                await ok(await client.delete(str(r.request.url), headers=bearer(token)), 204)
            else:
                assert (r.status_code, _detail(r)) == (fake.status_code, _detail(fake)), (op, who, r.text)
        return
    assert (real.status_code, _detail(real)) == (fake.status_code, _detail(fake)), (
        op,
        who,
        "answers differ for another tenant's id and a random id",
        real.text,
        fake.text,
    )
    if case.kind == "item":
        assert real.status_code in (403, 404), (op, who, real.status_code, real.text)
    elif case.kind == "create":
        if real.status_code < 300:
            created = real.json()
            assert created.get("tenant_id", "") != a.id, (op, who, created)
            assert not any(i in json.dumps(created) for i in a_ids), (op, who, "references A", created)
        else:
            assert real.status_code in (403, 404, 422), (op, who, real.status_code, real.text)


async def _check_public(
    client: httpx.AsyncClient,
    op: tuple[str, str],
    case: Case,
    a: TenantCreds,
    b: TenantCreds,
) -> None:
    """A public route answers without credentials as documented, and identically whatever credential is sent."""
    method, template = op
    path = _path(template, case.params, a.resources)
    r = await _call(client, method, path, None, case, a.resources)
    assert r.status_code == case.anonymous, (op, "without credentials", r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), (op, r.headers)
    tokens = [a.token(role) for role in ROLES] + [b.token(role) for role in ROLES] + [BOOTSTRAP_KEY, "garbage-token"]
    for token in tokens:
        with_token = await _call(client, method, path, token, case, a.resources)
        assert (with_token.status_code, _detail(with_token)) == (r.status_code, _detail(r)), (op, token[:12])
