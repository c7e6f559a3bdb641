"""Tenant secrets: sealed at rest and in KV, never returned, logged or audited; tenant-scoped; an agent's LLM
endpoint is checked against the egress policy and its key must be a secret of the agent's own tenant."""

from __future__ import annotations

import base64
import secrets

import asyncpg
import httpx
import pytest
from nats.js.errors import KeyNotFoundError
from pydantic import SecretStr
from voice_control_api.service import ControlApiService
from voice_runtime.secretbox import SecretBox, SecretError, parse_key
from voice_schemas import subjects

from .conftest import make_settings
from .helpers import BOOTSTRAP_KEY, SECRETS_KEY, TenantCreds, bearer, ok, populate, problem

pytestmark = pytest.mark.integration

BOX = SecretBox(parse_key(SECRETS_KEY))


def fresh_value() -> str:
    return "sk-test-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
async def a(client: httpx.AsyncClient) -> TenantCreds:
    return await populate(client, "secrets A")


@pytest.fixture(scope="module")
async def b(client: httpx.AsyncClient) -> TenantCreds:
    return await populate(client, "secrets B")


async def sealed_row(database_url: str, tenant_id: str, name: str) -> bytes | None:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(
            "SELECT sealed FROM tenant_secrets WHERE tenant_id = $1 AND name = $2", tenant_id, name
        )
    finally:
        await conn.close()
    return bytes(value) if value is not None else None


async def kv_secret(service: ControlApiService, tenant_id: str, name: str) -> bytes | None:
    try:
        entry = await service.kv["secrets"].get(subjects.secret_key(tenant_id, name))
    except KeyNotFoundError:
        return None
    return entry.value or None


async def test_secret_values_are_sealed_and_never_returned_logged_or_audited(
    client: httpx.AsyncClient, a: TenantCreds, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = bearer(a.admin_key)
    first, second = fresh_value(), fresh_value()
    created = await ok(await client.put("/v1/secrets/llm_key", json={"value": first}, headers=admin), 201)
    assert set(created) == {"tenant_id", "name", "created_at", "updated_at"}
    assert (created["tenant_id"], created["name"]) == (a.id, "llm_key")
    replaced = await client.put("/v1/secrets/llm_key", json={"value": second}, headers=admin)
    assert replaced.status_code == 200 and replaced.json()["created_at"] == created["created_at"]
    listed = await ok(await client.get("/v1/secrets", headers=admin))
    assert [s["name"] for s in listed["items"]] == ["llm_key"]

    stored = await sealed_row(database_url, a.id, "llm_key")
    assert stored is not None and second.encode() not in stored and first.encode() not in stored
    assert BOX.open(a.id, "llm_key", stored) == second

    audit = await ok(await client.get("/v1/audit-log", params={"resource_type": "secret"}, headers=admin))
    assert [(e["action"], e["resource_id"]) for e in audit["items"]] == [
        ("secret.update", "llm_key"),
        ("secret.create", "llm_key"),
    ]
    conn = await asyncpg.connect(database_url)
    try:
        rows = [str(dict(r)) for r in await conn.fetch("SELECT * FROM audit_log WHERE tenant_id = $1", a.id)]
    finally:
        await conn.close()

    # refused writes do not echo the value either
    too_big = "x" * 8193
    r = await client.put("/v1/secrets/llm_key", json={"value": too_big}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.value" and too_big not in r.text
    assert problem(await client.put("/v1/secrets/llm_key", json={"value": ""}, headers=admin), 422)
    r = await client.put("/v1/secrets/llm_key", json={"value": "é" * 4097}, headers=admin)  # 8194 bytes
    assert problem(r, 422)["errors"][0]["field"] == "body.value" and "é" * 4097 not in r.text
    problem(await client.put("/v1/secrets/bad.name", json={"value": first}, headers=admin), 422)
    problem(await client.put("/v1/secrets/" + "n" * 65, json={"value": first}, headers=admin), 422)
    r = await client.put("/v1/secrets/llm_key", json={"value": second, "name": "other"}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.name" and second not in r.text

    # supervisors manage no secrets
    for token in (a.sup_jwt, a.sup_key):
        problem(await client.put("/v1/secrets/llm_key", json={"value": first}, headers=bearer(token)), 403)
        problem(await client.get("/v1/secrets", headers=bearer(token)), 403)
        problem(await client.delete("/v1/secrets/llm_key", headers=bearer(token)), 403)

    captured = capsys.readouterr()
    for value in (first, second):
        assert value not in str(listed) and value not in created.values() and value not in replaced.text
        assert value not in str(audit) and not any(value in row for row in rows)
        assert value not in captured.out and value not in captured.err


async def test_kv_holds_ciphertext_that_opens_only_for_its_tenant_and_name(
    client: httpx.AsyncClient, service: ControlApiService, a: TenantCreds, b: TenantCreds, database_url: str
) -> None:
    admin = bearer(a.admin_key)
    value = fresh_value()
    await ok(await client.put("/v1/secrets/kv_key", json={"value": value}, headers=admin), 201)
    sealed = await kv_secret(service, a.id, "kv_key")
    assert sealed is not None and value.encode() not in sealed
    assert sealed == await sealed_row(database_url, a.id, "kv_key")
    assert BOX.open(a.id, "kv_key", sealed) == value
    for tenant, name in ((b.id, "kv_key"), (a.id, "llm_key"), (a.id, "kv_key2")):
        with pytest.raises(SecretError):
            BOX.open(tenant, name, sealed)
    with pytest.raises(SecretError):
        SecretBox(parse_key(base64.b64encode(secrets.token_bytes(32)).decode())).open(a.id, "kv_key", sealed)

    replaced = fresh_value()
    await ok(await client.put("/v1/secrets/kv_key", json={"value": replaced}, headers=admin), 200)
    sealed = await kv_secret(service, a.id, "kv_key")
    assert sealed is not None and BOX.open(a.id, "kv_key", sealed) == replaced

    await ok(await client.delete("/v1/secrets/kv_key", headers=admin), 204)
    assert await kv_secret(service, a.id, "kv_key") is None
    assert await sealed_row(database_url, a.id, "kv_key") is None
    problem(await client.delete("/v1/secrets/kv_key", headers=admin), 404)
    listed = await ok(await client.get("/v1/secrets", headers=admin))
    assert "kv_key" not in [s["name"] for s in listed["items"]]


async def test_resync_makes_the_secrets_bucket_match_postgresql(
    client: httpx.AsyncClient, service: ControlApiService, a: TenantCreds
) -> None:
    admin = bearer(a.admin_key)
    value = fresh_value()
    await ok(await client.put("/v1/secrets/resync_key", json={"value": value}, headers=admin), 201)
    bucket = service.kv["secrets"]
    await bucket.delete(subjects.secret_key(a.id, "resync_key"))  # a lost write
    stray = subjects.secret_key("ghosttenant", "gone")
    await bucket.put(stray, BOX.seal("ghosttenant", "gone", "x"))  # nothing in PostgreSQL backs it
    report = await service.resync()
    assert report.secrets_written >= 1 and stray in report.keys_deleted
    sealed = await kv_secret(service, a.id, "resync_key")
    assert sealed is not None and BOX.open(a.id, "resync_key", sealed) == value

    await bucket.put(subjects.secret_key(a.id, "resync_key"), b"tampered")
    await service.resync()
    sealed = await kv_secret(service, a.id, "resync_key")
    assert sealed is not None and BOX.open(a.id, "resync_key", sealed) == value


async def test_tenants_cannot_list_overwrite_delete_or_reference_each_others_secrets(
    client: httpx.AsyncClient, service: ControlApiService, a: TenantCreds, b: TenantCreds, database_url: str
) -> None:
    a_admin, b_admin = bearer(a.admin_key), bearer(b.admin_key)
    a_value, b_value = fresh_value(), fresh_value()
    await ok(await client.put("/v1/secrets/only_a", json={"value": a_value}, headers=a_admin), 201)
    await ok(await client.put("/v1/secrets/shared", json={"value": a_value}, headers=a_admin), 201)
    before = {n: await sealed_row(database_url, a.id, n) for n in ("only_a", "shared")}
    kv_before = {n: await kv_secret(service, a.id, n) for n in ("only_a", "shared")}

    listed = await ok(await client.get("/v1/secrets", params={"limit": 200}, headers=b_admin))
    assert {"only_a", "shared"}.isdisjoint(s["name"] for s in listed["items"])
    # the same name in B is B's own secret; A's is untouched
    mine = await ok(await client.put("/v1/secrets/shared", json={"value": b_value}, headers=b_admin), 201)
    assert mine["tenant_id"] == b.id
    problem(await client.delete("/v1/secrets/only_a", headers=b_admin), 404)
    for token in (b.admin_jwt, BOOTSTRAP_KEY):
        problem(await client.delete("/v1/secrets/only_a", headers=bearer(token)), 404)
    assert {n: await sealed_row(database_url, a.id, n) for n in before} == before
    assert {n: await kv_secret(service, a.id, n) for n in kv_before} == kv_before
    b_sealed = await kv_secret(service, b.id, "shared")
    assert b_sealed is not None and BOX.open(b.id, "shared", b_sealed) == b_value
    with pytest.raises(SecretError):
        BOX.open(a.id, "shared", b_sealed)

    # B's agents cannot use A's secret; A's can
    r = await client.post("/v1/agents", json={"name": "x", "llm": {"api_key_secret": "only_a"}}, headers=b_admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.llm.api_key_secret"
    b_agent = await ok(await client.post("/v1/agents", json={"name": "b"}, headers=b_admin), 201)
    r = await client.patch(f"/v1/agents/{b_agent['id']}", json={"llm": {"api_key_secret": "only_a"}}, headers=b_admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.llm.api_key_secret"
    r = await client.put(f"/v1/agents/{b_agent['id']}", json={"llm": {"api_key_secret": "only_a"}}, headers=b_admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.llm.api_key_secret"
    a_agent = await ok(
        await client.post(
            "/v1/agents",
            json={"name": "a", "llm": {"base_url": "https://1.1.1.1/v1", "api_key_secret": "only_a"}},
            headers=a_admin,
        ),
        201,
    )
    assert a_agent["llm"]["api_key_secret"] == "only_a" and a_value not in str(a_agent)
    deployment = await ok(await client.get(f"/v1/agents/{a_agent['id']}/deployment", headers=a_admin))
    assert deployment["config"]["llm"]["api_key_secret"] == "only_a" and a_value not in str(deployment)

    # a secret an agent uses cannot be deleted; once unused it can, and an old version naming it cannot return
    problem(await client.delete("/v1/secrets/only_a", headers=a_admin), 409)
    await ok(await client.patch(f"/v1/agents/{a_agent['id']}", json={"llm": {"api_key_secret": None}}, headers=a_admin))
    await ok(await client.delete("/v1/secrets/only_a", headers=a_admin), 204)
    r = await client.post(f"/v1/agents/{a_agent['id']}/versions/1/restore", headers=a_admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.llm.api_key_secret"


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8090/v1",
        "http://localhost:8090/v1",
        "http://10.0.0.5/v1",
        "http://192.168.1.10:8000/v1",
        "http://169.254.169.254/latest",
        "http://[::1]:8090/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://0.0.0.0:8090/v1",
    ],
)
async def test_agent_llm_endpoints_on_internal_addresses_are_refused(
    client: httpx.AsyncClient, a: TenantCreds, base_url: str
) -> None:
    admin = bearer(a.admin_key)
    r = await client.post("/v1/agents", json={"name": "ssrf", "llm": {"base_url": base_url}}, headers=admin)
    body = problem(r, 422)
    assert body["errors"][0]["field"] == "body.llm.base_url" and "EGRESS_ALLOW" in body["errors"][0]["message"]
    agent = await ok(await client.post("/v1/agents", json={"name": "ok"}, headers=admin), 201)
    r = await client.patch(f"/v1/agents/{agent['id']}", json={"llm": {"base_url": base_url}}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.llm.base_url"
    r = await client.put(f"/v1/agents/{agent['id']}", json={"llm": {"base_url": base_url}}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"] == "body.llm.base_url"
    current = await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin))
    assert current["version"] == 1 and current["llm"]["base_url"] is None


async def test_egress_allow_admits_the_internal_endpoints_it_names(database_url: str, nats_url: str) -> None:
    svc = ControlApiService(make_settings(database_url, nats_url, egress_allow="127.0.0.1:8090, llm.internal:80"))
    app = svc.app()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://egress") as c:
            t = await ok(await c.post("/v1/tenants", json={"name": "egress"}, headers=bearer(BOOTSTRAP_KEY)), 201)
            admin = bearer(t["admin_api_key"])
            for allowed in ("http://127.0.0.1:8090/v1", "http://llm.internal/v1"):
                await ok(await c.post("/v1/agents", json={"llm": {"base_url": allowed}}, headers=admin), 201)
            r = await c.post("/v1/agents", json={"llm": {"base_url": "http://127.0.0.1:8091/v1"}}, headers=admin)
            assert problem(r, 422)["errors"][0]["field"] == "body.llm.base_url"


async def test_secrets_are_refused_without_a_secrets_key(database_url: str, nats_url: str) -> None:
    svc = ControlApiService(make_settings(database_url, nats_url, secrets_key=None))
    app = svc.app()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://nokey") as c:
            t = await ok(await c.post("/v1/tenants", json={"name": "nokey"}, headers=bearer(BOOTSTRAP_KEY)), 201)
            admin = bearer(t["admin_api_key"])
            for r in (
                await c.put("/v1/secrets/k", json={"value": "v-123456"}, headers=admin),
                await c.get("/v1/secrets", headers=admin),
                await c.delete("/v1/secrets/k", headers=admin),
            ):
                assert "secrets are not configured" in problem(r, 503)["detail"]


def test_a_malformed_secrets_key_stops_the_start_without_quoting_it(database_url: str, nats_url: str) -> None:
    from pydantic import ValidationError

    for bad in ("not base64 at all!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValidationError) as e:
            make_settings(database_url, nats_url, secrets_key=SecretStr(bad))
        assert "SECRETS_KEY" in str(e.value) and bad not in str(e.value)
