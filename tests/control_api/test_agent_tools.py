"""Agent tools (end_call, transfer_call, http) as part of the versioned agent config: saved, returned and mirrored to
KV as the data plane's ``AgentConfig`` parses them; every rule a tool is held to refused with a 422 naming the field;
PATCH replaces the list in a new version; secrets and the transfer allow-list are the agent's own tenant's."""

from __future__ import annotations

import copy
import json
from typing import Any

import asyncpg
import httpx
import pytest
from nats.js.errors import KeyNotFoundError
from voice_control_api.service import ControlApiService
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig, EndCallTool, HttpTool, TransferCallTool

from .conftest import make_settings
from .helpers import BOOTSTRAP_KEY, TenantCreds, bearer, ok, populate, problem

pytestmark = pytest.mark.integration

SECRET = "booking_key"
PARAMETERS = {
    "type": "object",
    "properties": {"reference": {"type": "string", "pattern": "^[A-Z0-9]{6}$"}, "note": {"type": "string"}},
    "required": ["reference"],
}
HTTP_TOOL: dict[str, Any] = {
    "type": "http",
    "name": "find_booking",
    "description": "Look up a booking by its reference.",
    "method": "GET",
    "url": "https://api.example.com/v1/bookings/{reference}",  # example.com does not resolve here: not refused
    "headers": {"Authorization": "Bearer {{secret:" + SECRET + "}}", "X-Note": "{note}"},
    "parameters": PARAMETERS,
    "timeout_s": 3.0,
    "response_fields": ["booking.starts_at"],
    "requires_approval": True,
    "approval_timeout_s": 30.0,
    "filler": "Let me check.",
}
END_CALL_TOOL: dict[str, Any] = {"type": "end_call", "description": "Hang up once the caller said goodbye."}
TRANSFER_TOOL: dict[str, Any] = {
    "type": "transfer_call",
    "destinations": [
        {"name": "front desk", "target": "+14155550123"},
        {"name": "billing", "target": "sip:billing@pbx.example.com"},
    ],
}
ALLOW_LIST = ["+1415555*", "sip:billing@pbx.example.com"]


async def set_allow_list(client: httpx.AsyncClient, t: TenantCreds, patterns: list[str]) -> None:
    await ok(
        await client.put(
            f"/v1/tenants/{t.id}/transfer-allow-list", json={"patterns": patterns}, headers=bearer(t.admin_key)
        )
    )


@pytest.fixture(scope="module")
async def a(client: httpx.AsyncClient) -> TenantCreds:
    """A tenant with the secret the HTTP tool names and an allow-list the transfer targets are on."""
    t = await populate(client, "tools A")
    await ok(await client.put(f"/v1/secrets/{SECRET}", json={"value": "sk-booking-a"}, headers=bearer(t.admin_key)))
    await set_allow_list(client, t, ALLOW_LIST)
    return t


@pytest.fixture(scope="module")
async def b(client: httpx.AsyncClient) -> TenantCreds:
    """Another tenant, with a secret of its own and an allow-list naming every number."""
    t = await populate(client, "tools B")
    await ok(await client.put("/v1/secrets/b_only", json={"value": "sk-b"}, headers=bearer(t.admin_key)))
    await set_allow_list(client, t, ["+1*"])
    return t


async def kv_config(service: ControlApiService, key: str) -> dict[str, Any] | None:
    try:
        entry = await service.kv["agents"].get(key)
    except KeyNotFoundError:
        return None
    return json.loads(entry.value) if entry.value else None


def tool(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(base), **changes}


# ------------------------------------------------------------------ saved, returned, mirrored
async def test_each_tool_type_is_saved_returned_and_mirrored_to_kv(
    client: httpx.AsyncClient, service: ControlApiService, a: TenantCreds
) -> None:
    admin = bearer(a.admin_key)
    tools = [HTTP_TOOL, END_CALL_TOOL, TRANSFER_TOOL]
    agent = await ok(await client.post("/v1/agents", json={"name": "tools", "tools": tools}, headers=admin), 201)

    for returned in (agent, await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin))):
        http, end_call, transfer = returned["tools"]
        assert {k: http[k] for k in HTTP_TOOL} == HTTP_TOOL  # as stored, the secret only as its reference
        assert http["max_response_bytes"] == 65_536  # defaults filled in
        assert (end_call["type"], end_call["name"], end_call["description"]) == (
            "end_call",
            "end_call",
            "Hang up once the caller said goodbye.",
        )
        assert (transfer["name"], transfer["destinations"]) == ("transfer_call", TRANSFER_TOOL["destinations"])
    assert "sk-booking-a" not in json.dumps(agent)

    current = await kv_config(service, subjects.agent_key(agent["id"]))
    assert current is not None
    config = AgentConfig.model_validate(current)  # the data plane's own contract parses them
    http_tool, end_tool, transfer_tool = config.tools
    assert isinstance(http_tool, HttpTool) and isinstance(end_tool, EndCallTool)
    assert isinstance(transfer_tool, TransferCallTool)
    assert http_tool.method == "GET" and http_tool.url == HTTP_TOOL["url"] and http_tool.requires_approval
    assert http_tool.headers["Authorization"] == "Bearer {{secret:booking_key}}" and http_tool.parameters == PARAMETERS
    assert [d.target for d in transfer_tool.destinations] == ["+14155550123", "sip:billing@pbx.example.com"]
    assert config.tool("find_booking") == http_tool
    assert "sk-booking-a" not in json.dumps(current)  # the value never is in the config


async def test_patch_replaces_the_tools_in_a_new_version_and_versions_keep_their_own(
    client: httpx.AsyncClient, service: ControlApiService, a: TenantCreds
) -> None:
    admin = bearer(a.admin_key)
    agent = await ok(
        await client.post("/v1/agents", json={"name": "p", "tools": [HTTP_TOOL, END_CALL_TOOL]}, headers=admin), 201
    )
    url = f"/v1/agents/{agent['id']}"
    patched = await ok(await client.patch(url, json={"tools": [TRANSFER_TOOL], "version": 1}, headers=admin))
    assert patched["version"] == 2 and [t["type"] for t in patched["tools"]] == ["transfer_call"]  # replaced whole
    other = await ok(await client.patch(url, json={"system_prompt": "other"}, headers=admin))
    assert other["version"] == 3 and [t["type"] for t in other["tools"]] == ["transfer_call"]  # unset: unchanged
    cleared = await ok(await client.patch(url, json={"tools": []}, headers=admin))
    assert cleared["version"] == 4 and cleared["tools"] == []

    v1 = await ok(await client.get(f"{url}/versions/1", headers=admin))
    v2 = await ok(await client.get(f"{url}/versions/2", headers=admin))
    assert [t["name"] for t in v1["tools"]] == ["find_booking", "end_call"]
    assert [t["name"] for t in v2["tools"]] == ["transfer_call"]
    kv_v1 = await kv_config(service, subjects.agent_version_key(agent["id"], 1))
    assert kv_v1 is not None and [t.name for t in AgentConfig.model_validate(kv_v1).tools] == [
        "find_booking",
        "end_call",
    ]
    current = await kv_config(service, subjects.agent_key(agent["id"]))
    assert current is not None and current["version"] == 4 and current["tools"] == []

    restored = await ok(await client.post(f"{url}/versions/1/restore", headers=admin), (200, 201))
    assert restored["version"] == 5 and [t["name"] for t in restored["tools"]] == ["find_booking", "end_call"]


# ------------------------------------------------------------------ refused
BAD_TOOLS: list[tuple[str, list[dict[str, Any]], str, str]] = [
    # (case, tools, field of the first error, words of its message)
    ("duplicate name", [HTTP_TOOL, tool(HTTP_TOOL, name="Find_Booking")], "body.tools.1.name", "has this name"),
    ("built-in name", [tool(HTTP_TOOL, name="end_call")], "body.tools.0.name", "built-in"),
    ("loopback URL", [tool(HTTP_TOOL, url="http://127.0.0.1/x")], "body.tools.0.url", "EGRESS_ALLOW"),
    ("metadata URL", [tool(HTTP_TOOL, url="http://169.254.169.254/")], "body.tools.0.url", "EGRESS_ALLOW"),
    ("private URL", [tool(HTTP_TOOL, url="http://10.1.2.3:8080/{reference}")], "body.tools.0.url", "internal"),
    ("localhost by name", [tool(HTTP_TOOL, url="http://localhost:9/x")], "body.tools.0.url", "internal"),
    ("placeholder in host", [tool(HTTP_TOOL, url="https://{reference}.example.com/")], "body.tools.0.url", "host"),
    ("URL credentials", [tool(HTTP_TOOL, url="https://u:p@api.example.com/")], "body.tools.0.url", "credentials"),
    ("URL scheme", [tool(HTTP_TOOL, url="ftp://api.example.com/x")], "body.tools.0.http.url", "pattern"),
    (
        "URL placeholder not a parameter",
        [tool(HTTP_TOOL, url="https://api.example.com/{order}")],
        "body.tools.0.url",
        "{order} is not a property of parameters",
    ),
    (
        "header placeholder not a parameter",
        [tool(HTTP_TOOL, headers={"X-Order": "{order}"})],
        "body.tools.0.headers.X-Order",
        "{order} is not a property",
    ),
    ("stray brace", [tool(HTTP_TOOL, headers={"X-Json": '{"a": 1}'})], "body.tools.0.headers.X-Json", "brace"),
    (
        "unknown secret",
        [tool(HTTP_TOOL, headers={"Authorization": "Bearer {{secret:nope}}"})],
        "body.tools.0.headers.Authorization",
        "no such secret",
    ),
    (
        "unknown secret in the URL",
        [tool(HTTP_TOOL, url="https://api.example.com/x?key={{secret:nope}}")],
        "body.tools.0.url",
        "no such secret",
    ),
    (
        "CR/LF in a header value",
        [tool(HTTP_TOOL, headers={"X-Note": "a\r\nX-Injected: 1"})],
        "body.tools.0.headers.X-Note",
        "CR, LF",
    ),
    ("header name not a token", [tool(HTTP_TOOL, headers={"X Bad:": "v"})], "body.tools.0.headers", "token"),
    ("framing header", [tool(HTTP_TOOL, headers={"Content-Length": "1"})], "body.tools.0.headers.Content-Length", ""),
    (
        "parameters not an object schema",
        [tool(HTTP_TOOL, parameters={"type": "string"})],
        "body.tools.0.parameters",
        '"type": "object"',
    ),
    (
        "bad JSON Schema",
        [tool(HTTP_TOOL, parameters={"type": "object", "properties": {"n": {"type": "integr"}}})],
        "body.tools.0.parameters.properties.n.type",
        "not a valid JSON Schema",
    ),
    (
        "remote $ref",
        [tool(HTTP_TOOL, url="https://api.example.com/", headers={},
              parameters={"type": "object", "properties": {"n": {"$ref": "https://evil.example/s.json"}}})],
        "body.tools.0.parameters.properties.n.$ref",
        "local",
    ),
    ("NUL in text", [tool(HTTP_TOOL, description="a\x00b")], "body.tools.0.description", "NUL"),
    ("unknown field", [tool(HTTP_TOOL, secret_value="x")], "body.tools.0.http.secret_value", "Extra inputs"),
    ("unknown type", [{"type": "mcp", "name": "m"}], "body.tools.0", "tag"),
    (
        "transfer target not on the allow-list",
        [tool(TRANSFER_TOOL, destinations=[{"name": "ok", "target": "+14155550100"},
                                           {"name": "abroad", "target": "+4930123456"}])],
        "body.tools.0.destinations.1.target",
        "allow-list",
    ),
    (
        "transfer SIP URI not on the allow-list",
        [tool(TRANSFER_TOOL, destinations=[{"name": "pbx", "target": "sip:ceo@pbx.example.com"}])],
        "body.tools.0.destinations.0.target",
        "allow-list",
    ),
    (
        "duplicate destination",
        [tool(TRANSFER_TOOL, destinations=[{"name": "desk", "target": "+14155550100"},
                                           {"name": "Desk", "target": "+14155550101"}])],
        "body.tools.0.destinations.1.name",
        "another destination",
    ),
    ("too many tools", [tool(HTTP_TOOL, name=f"t{i}") for i in range(33)], "body.tools", "at most 32"),
]


@pytest.mark.parametrize(("tools", "field", "words"), [c[1:] for c in BAD_TOOLS], ids=[c[0] for c in BAD_TOOLS])
async def test_a_bad_tool_is_refused_with_the_field_that_is_wrong(
    client: httpx.AsyncClient, a: TenantCreds, tools: list[dict[str, Any]], field: str, words: str
) -> None:
    admin = bearer(a.admin_key)
    body = problem(await client.post("/v1/agents", json={"name": "bad", "tools": tools}, headers=admin), 422)
    error = body["errors"][0]
    assert error["field"] == field and words in error["message"], body
    assert field in body["detail"]

    agent = await ok(await client.post("/v1/agents", json={"name": "good", "tools": [HTTP_TOOL]}, headers=admin), 201)
    url = f"/v1/agents/{agent['id']}"
    for r in (
        await client.patch(url, json={"tools": tools}, headers=admin),
        await client.put(url, json={"name": "bad", "tools": tools}, headers=admin),
    ):
        assert problem(r, 422)["errors"][0]["field"] == field
    current = await ok(await client.get(url, headers=admin))
    assert current["version"] == 1 and [t["name"] for t in current["tools"]] == ["find_booking"]


async def test_an_empty_allow_list_permits_no_transfer(client: httpx.AsyncClient) -> None:
    t = await populate(client, "tools no allow-list")
    admin = bearer(t.admin_key)
    body = problem(await client.post("/v1/agents", json={"tools": [TRANSFER_TOOL]}, headers=admin), 422)
    assert body["errors"][0]["field"] == "body.tools.0.destinations.0.target"
    assert "allow-list is empty" in body["errors"][0]["message"]
    assert "+14155550123" not in body["detail"]  # a target is never repeated back
    await set_allow_list(client, t, ["+14155550123", "sip:billing@pbx.example.com"])
    await ok(await client.post("/v1/agents", json={"tools": [TRANSFER_TOOL]}, headers=admin), 201)


async def test_secrets_and_allow_lists_are_the_agents_own_tenants(
    client: httpx.AsyncClient, a: TenantCreds, b: TenantCreds
) -> None:
    # tenant B's secret name does not satisfy tenant A's reference, nor B's allow-list A's transfer
    a_admin = bearer(a.admin_key)
    uses_b = tool(HTTP_TOOL, headers={"Authorization": "Bearer {{secret:b_only}}"})
    body = problem(await client.post("/v1/agents", json={"tools": [uses_b]}, headers=a_admin), 422)
    assert body["errors"][0] == {
        "field": "body.tools.0.headers.Authorization",
        "message": "no such secret in this tenant",
        "type": "value_error",
    }
    far = tool(TRANSFER_TOOL, destinations=[{"name": "x", "target": "+16505550100"}])  # on B's list (+1*) only
    r = await client.post("/v1/agents", json={"tools": [far]}, headers=a_admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.tools.0.destinations.0.target"
    # and B's agent may use both
    await ok(await client.post("/v1/agents", json={"tools": [uses_b, far]}, headers=bearer(b.admin_key)), 201)


async def test_a_secret_a_tool_names_cannot_be_deleted(client: httpx.AsyncClient, a: TenantCreds) -> None:
    admin = bearer(a.admin_key)
    await ok(await client.put("/v1/secrets/in_use", json={"value": "sk-in-use"}, headers=admin))
    await ok(await client.put("/v1/secrets/in_use2", json={"value": "sk-in-use"}, headers=admin))  # a longer name
    uses = tool(HTTP_TOOL, url="https://api.example.com/{reference}?k={{secret:in_use2}}",
                headers={"Authorization": "Bearer {{secret:in_use}}"})
    agent = await ok(await client.post("/v1/agents", json={"tools": [uses]}, headers=admin), 201)
    for name in ("in_use", "in_use2"):
        assert "a tool" in problem(await client.delete(f"/v1/secrets/{name}", headers=admin), 409)["detail"]
    await ok(await client.patch(f"/v1/agents/{agent['id']}", json={"tools": []}, headers=admin))
    for name in ("in_use", "in_use2"):
        await ok(await client.delete(f"/v1/secrets/{name}", headers=admin), 204)


async def test_versions_stored_before_tools_existed_still_read(
    client: httpx.AsyncClient, a: TenantCreds, database_url: str
) -> None:
    """Old versions hold bare tool ids that never named anything: they read as no tools."""
    admin = bearer(a.admin_key)
    agent = await ok(await client.post("/v1/agents", json={"name": "legacy"}, headers=admin), 201)
    conn = await asyncpg.connect(database_url)
    try:  # versions are immutable: the old-style one is added as version 2
        await conn.execute(
            """
            INSERT INTO agent_versions (agent_id, version, tenant_id, config, created_by)
            SELECT agent_id, 2, tenant_id, jsonb_set(config, '{tools}', '["t1", "t2"]'), created_by
            FROM agent_versions WHERE agent_id = $1 AND version = 1
            """,
            agent["id"],
        )
        await conn.execute("UPDATE agents SET current_version = 2 WHERE id = $1", agent["id"])
    finally:
        await conn.close()
    assert (await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin)))["tools"] == []
    assert (await ok(await client.get(f"/v1/agents/{agent['id']}/versions/2", headers=admin)))["tools"] == []
    patched = await ok(await client.patch(f"/v1/agents/{agent['id']}", json={"name": "legacy 2"}, headers=admin))
    assert patched["version"] == 3 and patched["tools"] == []


async def test_egress_allow_admits_the_internal_tool_hosts_it_names(database_url: str, nats_url: str) -> None:
    svc = ControlApiService(make_settings(database_url, nats_url, egress_allow="127.0.0.1:8099"))
    app = svc.app()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://egress") as c:
            t = await ok(await c.post("/v1/tenants", json={"name": "tool egress"}, headers=bearer(BOOTSTRAP_KEY)), 201)
            admin = bearer(t["admin_api_key"])
            allowed = tool(HTTP_TOOL, url="http://127.0.0.1:8099/bookings/{reference}", headers={})
            await ok(await c.post("/v1/agents", json={"tools": [allowed]}, headers=admin), 201)
            other_port = tool(allowed, url="http://127.0.0.1:8098/bookings/{reference}")
            r = await c.post("/v1/agents", json={"tools": [allowed, tool(other_port, name="other")]}, headers=admin)
            assert problem(r, 422)["errors"][0]["field"] == "body.tools.1.url"
