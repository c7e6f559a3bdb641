"""An agent's MCP servers (``mcp_servers``) as part of the versioned agent config: saved, returned and mirrored to KV as
brain's ``AgentConfig`` parses them; every rule a server is held to refused with a 422 naming the field; the secrets
its headers name are the agent's own tenant's and cannot be deleted while it uses them."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
from voice_control_api.service import ControlApiService
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig

from .conftest import make_settings
from .helpers import BOOTSTRAP_KEY, TenantCreds, bearer, ok, populate, problem

pytestmark = pytest.mark.integration

SERVER: dict[str, Any] = {
    "name": "crm",
    "url": "https://mcp.example.com/mcp",  # example.com does not resolve here: not refused
    "headers": {"Authorization": "Bearer {{secret:crm_token}}"},
    "allowed_tools": ["find_customer", {"name": "book.table", "timeout_s": 4.0, "requires_approval": True,
                                        "filler": "One moment."}],
    "timeout_s": 6.0,
    "list_ttl_s": 120,
}


def server(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SERVER), **changes}


@pytest.fixture(scope="module")
async def a(client: httpx.AsyncClient) -> TenantCreds:
    t = await populate(client, "mcp A")
    await ok(await client.put("/v1/secrets/crm_token", json={"value": "sk-crm-a"}, headers=bearer(t.admin_key)))
    return t


async def test_mcp_servers_are_saved_returned_mirrored_and_patched(
    client: httpx.AsyncClient, service: ControlApiService, a: TenantCreds
) -> None:
    admin = bearer(a.admin_key)
    agent = await ok(await client.post("/v1/agents", json={"name": "mcp", "mcp_servers": [SERVER]}, headers=admin),
                     201)
    for returned in (agent, await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin))):
        (crm,) = returned["mcp_servers"]
        assert crm["url"] == SERVER["url"] and crm["headers"] == SERVER["headers"]  # the secret only as its reference
        assert [t["name"] for t in crm["allowed_tools"]] == ["find_customer", "book.table"]
        assert crm["allowed_tools"][1]["requires_approval"] and crm["allowed_tools"][1]["timeout_s"] == 4.0
        assert crm["max_result_bytes"] == 16_384  # defaults filled in
    assert "sk-crm-a" not in json.dumps(agent)

    entry = await service.kv["agents"].get(subjects.agent_key(agent["id"]))
    config = AgentConfig.model_validate(json.loads(entry.value))  # brain's own contract parses it
    (spec,) = config.mcp_servers
    assert list(spec.function_names()) == ["crm__find_customer", "crm__book_table"]
    assert spec.timeout_s == 6.0 and spec.list_ttl_s == 120

    # the secret its header names cannot be deleted while the agent uses it
    assert "an MCP server" in problem(await client.delete("/v1/secrets/crm_token", headers=admin), 409)["detail"]
    patched = await ok(await client.patch(f"/v1/agents/{agent['id']}", json={"mcp_servers": []}, headers=admin))
    assert patched["version"] == 2 and patched["mcp_servers"] == []
    v1 = await ok(await client.get(f"/v1/agents/{agent['id']}/versions/1", headers=admin))
    assert v1["mcp_servers"][0]["name"] == "crm"  # versions keep their own
    await ok(await client.delete("/v1/secrets/crm_token", headers=admin), 204)  # no longer used
    await ok(await client.put("/v1/secrets/crm_token", json={"value": "sk-crm-a"}, headers=admin))


BAD_SERVERS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], str, str]] = [
    ("no allow-list", [server(allowed_tools=[])], [], "body.mcp_servers.0.allowed_tools", "at least 1"),
    ("unknown field", [server(command="rm -rf /")], [], "body.mcp_servers.0.command", "Extra inputs"),
    ("bad server name", [server(name="c_rm")], [], "body.mcp_servers.0.name", "pattern"),
    ("duplicate name", [SERVER, server(name="CRM")], [], "body.mcp_servers.1.name", "has this name already"),
    ("not http", [server(url="ftp://mcp.example.com/mcp")], [], "body.mcp_servers.0.url", "pattern"),
    ("internal", [server(url="http://127.0.0.1:8931/mcp")], [], "body.mcp_servers.0.url", "internal address"),
    ("metadata", [server(url="http://169.254.169.254/mcp")], [], "body.mcp_servers.0.url", "internal address"),
    ("credentials", [server(url="https://u:p@mcp.example.com/mcp")], [], "body.mcp_servers.0.url", "credentials"),
    ("secret in url", [server(url="https://mcp.example.com/mcp?k={{secret:crm_token}}")], [],
     "body.mcp_servers.0.url", "put a secret in a header"),
    ("missing secret", [server(headers={"Authorization": "Bearer {{secret:nope}}"})], [],
     "body.mcp_servers.0.headers.Authorization", "no such secret"),
    ("argument placeholder", [server(headers={"X-Id": "{customer}"})], [],
     "body.mcp_servers.0.headers.X-Id", "not a property of parameters"),
    ("reserved header", [server(headers={"Host": "evil"})], [], "body.mcp_servers.0.headers.Host", "HTTP client"),
    ("header line break", [server(headers={"X-A": "a\r\nX-B: b"})], [], "body.mcp_servers.0.headers.X-A",
     "control characters"),
    ("bad tool name", [server(allowed_tools=["find customer"])], [], "body.mcp_servers.0.allowed_tools.0.name",
     "pattern"),
    ("same name twice", [server(allowed_tools=["a.b", "a_b"])], [], "body.mcp_servers.0.allowed_tools.1.name",
     "the name of mcp_servers.0.allowed_tools.0"),
    ("name too long", [server(allowed_tools=["x" * 63])], [], "body.mcp_servers.0.allowed_tools.0.name",
     "longer than 64"),
    ("clashes with a tool", [server(allowed_tools=["lookup"])],
     [{"type": "http", "name": "CRM__lookup", "url": "https://api.example.com/x"}],
     "body.mcp_servers.0.allowed_tools.0.name", "the name of tools.0"),
    ("too many", [server(name=f"s{i}") for i in range(9)], [], "body.mcp_servers", "at most 8"),
]


@pytest.mark.parametrize(("servers", "tools", "field", "words"), [c[1:] for c in BAD_SERVERS],
                         ids=[c[0] for c in BAD_SERVERS])
async def test_a_bad_mcp_server_is_refused_with_the_field_that_is_wrong(
    client: httpx.AsyncClient, a: TenantCreds, servers: list[dict[str, Any]], tools: list[dict[str, Any]],
    field: str, words: str,
) -> None:
    admin = bearer(a.admin_key)
    body = problem(await client.post("/v1/agents", json={"name": "bad", "mcp_servers": servers, "tools": tools},
                                     headers=admin), 422)
    error = body["errors"][0]
    assert error["field"] == field and words in error["message"], body
    agent = await ok(await client.post("/v1/agents", json={"name": "good", "mcp_servers": [SERVER]}, headers=admin),
                     201)
    r = await client.patch(f"/v1/agents/{agent['id']}", json={"mcp_servers": servers, "tools": tools}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == field
    current = await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin))
    assert current["version"] == 1 and current["mcp_servers"][0]["name"] == "crm"


async def test_another_tenants_secret_does_not_satisfy_a_header(client: httpx.AsyncClient, a: TenantCreds) -> None:
    b = await populate(client, "mcp B")
    body = problem(await client.post("/v1/agents", json={"mcp_servers": [SERVER]}, headers=bearer(b.admin_key)), 422)
    assert body["errors"][0]["field"] == "body.mcp_servers.0.headers.Authorization"


async def test_egress_allow_admits_an_internal_mcp_server_it_names(database_url: str, nats_url: str) -> None:
    svc = ControlApiService(make_settings(database_url, nats_url, egress_allow="127.0.0.1:8931"))
    app = svc.app()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://egress") as c:
            t = await ok(await c.post("/v1/tenants", json={"name": "mcp egress"}, headers=bearer(BOOTSTRAP_KEY)), 201)
            admin = bearer(t["admin_api_key"])
            local = server(url="http://127.0.0.1:8931/mcp", headers={})
            await ok(await c.post("/v1/agents", json={"mcp_servers": [local]}, headers=admin), 201)
            other_port = server(name="other", url="http://127.0.0.1:8932/mcp", headers={})
            r = await c.post("/v1/agents", json={"mcp_servers": [local, other_port]}, headers=admin)
            assert problem(r, 422)["errors"][0]["field"] == "body.mcp_servers.1.url"
