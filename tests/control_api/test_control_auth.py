"""Identity and access: API keys, bootstrap, login/refresh, roles, rate limit."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from voice_control_api.service import ControlApiService
from voice_control_api.usecases.bootstrap import bootstrap
from voice_runtime import db

from .conftest import make_settings
from .helpers import BOOTSTRAP_KEY, PASSWORD, bearer, create_user, login, ok, populate

pytestmark = pytest.mark.integration


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    assert body["request_id"] == r.headers["x-request-id"]
    return body


async def test_missing_and_bad_credentials_are_401_problems(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/agents")
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer nope-nope-nope", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer vk_aaaaaaaa_" + "b" * 43):
        assert_problem(await client.get("/v1/agents", headers={"Authorization": header}), 401)


async def test_key_is_shown_once_stored_hashed_and_revocation_is_immediate(
    client: httpx.AsyncClient, database_url: str
) -> None:
    t = await populate(client, "keys")
    admin = bearer(t.admin_key)
    created = await ok(await client.post("/v1/api-keys", json={"name": "ci"}, headers=admin), 201)
    key = created["key"]
    assert key.startswith(created["prefix"] + "_")
    listed = await ok(await client.get("/v1/api-keys", headers=admin))
    assert key not in str(listed) and created["prefix"] in str(listed)
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
        assert key not in str(dict(stored)) and stored["last_used_at"] is None
    finally:
        await conn.close()

    await ok(await client.get("/v1/agents", headers=bearer(key)))
    got = await ok(await client.get(f"/v1/api-keys/{created['id']}", headers=admin))
    assert got["last_used_at"] is not None and got["revoked_at"] is None

    await ok(await client.delete(f"/v1/api-keys/{created['id']}", headers=admin), 204)
    body = assert_problem(await client.get("/v1/agents", headers=bearer(key)), 401)
    assert "revoked" in body["detail"]
    assert created["id"] not in str(await ok(await client.get("/v1/api-keys", headers=admin)))
    everything = await ok(await client.get("/v1/api-keys", params={"include_revoked": "true"}, headers=admin))
    assert any(k["id"] == created["id"] and k["revoked_at"] for k in everything["items"])
    await ok(await client.delete(f"/v1/api-keys/{created['id']}", headers=admin), 204)  # idempotent


async def test_expired_keys_and_inactive_supervisors_are_refused(client: httpx.AsyncClient, database_url: str) -> None:
    t = await populate(client, "expiry")
    created = await ok(await client.post("/v1/api-keys", json={"name": "temp"}, headers=bearer(t.admin_key)), 201)
    r = await client.post(
        "/v1/api-keys", json={"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, headers=bearer(t.admin_key)
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "body.expires_at"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", created["id"])
    finally:
        await conn.close()
    assert "expired" in assert_problem(await client.get("/v1/agents", headers=bearer(created["key"])), 401)["detail"]

    await ok(await client.get("/v1/agents", headers=bearer(t.sup_key)))
    await ok(await client.patch(f"/v1/users/{t.sup_user}", json={"is_active": False}, headers=bearer(t.admin_key)))
    assert_problem(await client.get("/v1/agents", headers=bearer(t.sup_key)), 401)
    assert_problem(await client.get("/v1/agents", headers=bearer(t.sup_jwt)), 401)
    assert_problem(await client.post("/v1/auth/refresh", json={"refresh_token": t.sup_refresh}), 401)


async def test_keys_of_a_deactivated_user_are_refused_whatever_their_role(client: httpx.AsyncClient) -> None:
    t = await populate(client, "deactivated")
    admin = bearer(t.admin_key)
    owner = await create_user(client, t.admin_key, "admin", "keyowner")
    admin_key = await ok(
        await client.post("/v1/api-keys", json={"name": "own", "role": "admin", "user_id": owner["id"]}, headers=admin),
        201,
    )
    await ok(await client.get("/v1/users", headers=bearer(admin_key["key"])))
    await ok(await client.get("/v1/auth/me", headers=bearer(t.sup_key)))

    for user_id in (owner["id"], t.sup_user):
        await ok(await client.patch(f"/v1/users/{user_id}", json={"is_active": False}, headers=admin))
    for key in (admin_key["key"], t.sup_key):
        for path in ("/v1/users", "/v1/agents", "/v1/auth/me"):
            body = assert_problem(await client.get(path, headers=bearer(key)), 401)
            assert "inactive" in body["detail"], (path, body)
    r = await client.post("/v1/api-keys", json={"name": "escape"}, headers=bearer(admin_key["key"]))
    assert_problem(r, 401)

    # reactivated: the same keys work again (nothing was revoked)
    await ok(await client.patch(f"/v1/users/{owner['id']}", json={"is_active": True}, headers=admin))
    await ok(await client.get("/v1/users", headers=bearer(admin_key["key"])))
    # keys without a user (the tenant's root key) are unaffected
    await ok(await client.get("/v1/users", headers=admin))


async def test_supervisor_keys_need_a_supervisor_user_of_the_tenant(client: httpx.AsyncClient) -> None:
    t = await populate(client, "supkeys")
    admin = bearer(t.admin_key)
    r = await client.post("/v1/api-keys", json={"name": "s", "role": "supervisor"}, headers=admin)
    assert assert_problem(r, 422)["errors"][0]["field"] == "body.user_id"
    r = await client.post(
        "/v1/api-keys", json={"name": "s", "role": "supervisor", "user_id": t.admin_user}, headers=admin
    )
    assert_problem(r, 422)
    me = await ok(await client.get("/v1/auth/me", headers=bearer(t.sup_key)))
    assert me["role"] == "supervisor" and me["user_id"] == t.sup_user and me["actor_type"] == "api_key"


async def test_platform_admin_creates_tenants_and_only_it_grants_the_scope(
    client: httpx.AsyncClient, platform_key: str
) -> None:
    t = await populate(client, "scope")
    assert_problem(await client.post("/v1/tenants", json={"name": "x"}, headers=bearer(t.admin_key)), 403)
    r = await client.post("/v1/api-keys", json={"name": "p", "platform_admin": True}, headers=bearer(t.admin_key))
    assert_problem(r, 403)
    created = await ok(await client.post("/v1/tenants", json={"name": "Acme"}, headers=bearer(platform_key)), 201)
    me = await ok(await client.get("/v1/auth/me", headers=bearer(created["admin_api_key"])))
    assert me == {
        "tenant_id": created["id"],
        "role": "admin",
        "actor_type": "api_key",
        "actor_id": created["admin_api_key_id"],
        "user_id": None,
        "platform_admin": False,
    }
    key = await ok(
        await client.post("/v1/api-keys", json={"name": "ops", "platform_admin": True}, headers=bearer(platform_key)),
        201,
    )
    assert key["platform_admin"] and key["tenant_id"] == "default"
    await ok(await client.post("/v1/tenants", json={"name": "Second"}, headers=bearer(key["key"])), 201)
    await ok(await client.delete(f"/v1/api-keys/{key['id']}", headers=bearer(platform_key)), 204)
    tenants = await ok(await client.get("/v1/tenants", params={"limit": 200}, headers=bearer(platform_key)))
    assert {created["id"], "default", t.id} <= {x["id"] for x in tenants["items"]}
    own = await ok(await client.get("/v1/tenants", headers=bearer(t.admin_key)))
    assert [x["id"] for x in own["items"]] == [t.id]


async def test_login_refresh_rotation_reuse_and_logout(client: httpx.AsyncClient) -> None:
    t = await populate(client, "login")
    user = await create_user(client, t.admin_key, "admin", "ops")
    assert_problem(await client.post("/v1/auth/login", json={"email": user["email"], "password": "wrong-pass"}), 401)
    assert_problem(await client.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "x"}), 401)
    tokens = await login(client, user["email"].upper())
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] > 0
    me = await ok(await client.get("/v1/auth/me", headers=bearer(tokens["access_token"])))
    assert me["actor_type"] == "user" and me["user_id"] == user["id"] and me["role"] == "admin"

    second = await ok(await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    assert second["refresh_token"] != tokens["refresh_token"]
    await ok(await client.get("/v1/agents", headers=bearer(second["access_token"])))
    # the first refresh token was used: presenting it again revokes the whole family
    assert_problem(await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401)
    assert_problem(await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}), 401)

    third = await login(client, user["email"])
    await ok(await client.post("/v1/auth/logout", json={"refresh_token": third["refresh_token"]}), 204)
    assert_problem(await client.post("/v1/auth/refresh", json={"refresh_token": third["refresh_token"]}), 401)


async def test_role_changes_apply_to_live_tokens(client: httpx.AsyncClient) -> None:
    t = await populate(client, "roles")
    user = await create_user(client, t.admin_key, "admin", "boss")
    token = (await login(client, user["email"]))["access_token"]
    await ok(await client.get("/v1/users", headers=bearer(token)))
    await ok(await client.patch(f"/v1/users/{user['id']}", json={"role": "supervisor"}, headers=bearer(t.admin_key)))
    assert_problem(await client.get("/v1/users", headers=bearer(token)), 403)
    # admins cannot lock themselves out
    r = await client.patch(f"/v1/users/{t.admin_user}", json={"role": "supervisor"}, headers=bearer(t.admin_jwt))
    assert_problem(r, 409)
    assert_problem(await client.delete(f"/v1/users/{t.admin_user}", headers=bearer(t.admin_jwt)), 409)


async def test_password_change(client: httpx.AsyncClient) -> None:
    t = await populate(client, "pw")
    user = await create_user(client, t.admin_key, "supervisor", "pw")
    tokens = await login(client, user["email"])
    r = await client.post(
        "/v1/auth/password",
        json={"current_password": "nope", "new_password": "a new passphrase"},
        headers=bearer(tokens["access_token"]),
    )
    assert_problem(r, 403)
    r = await client.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=bearer(tokens["access_token"]),
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "body.new_password"
    await ok(
        await client.post(
            "/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "a new passphrase"},
            headers=bearer(tokens["access_token"]),
        ),
        204,
    )
    assert_problem(await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401)
    assert_problem(await client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD}), 401)
    await login(client, user["email"], "a new passphrase")
    r = await client.post(
        "/v1/auth/password",
        json={"current_password": "x", "new_password": "a new passphrase"},
        headers=bearer(t.admin_key),
    )
    assert_problem(r, 403)


async def test_rate_limit_per_credential_with_retry_after(database_url: str, nats_url: str) -> None:
    svc = ControlApiService(make_settings(database_url, nats_url, rate_limit_per_s=0.1, rate_limit_burst=3))
    app = svc.app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://limited") as c:
            t = await ok(await c.post("/v1/tenants", json={"name": "rl"}, headers=bearer(BOOTSTRAP_KEY)), 201)
            key = t["admin_api_key"]
            statuses = [(await c.get("/v1/agents", headers=bearer(key))).status_code for _ in range(3)]
            assert statuses == [200, 200, 200]
            r = await c.get("/v1/agents", headers=bearer(key))
            assert_problem(r, 429)
            assert int(r.headers["retry-after"]) >= 1
            # another credential has its own bucket
            assert (await c.get("/v1/auth/me", headers=bearer(BOOTSTRAP_KEY))).status_code == 200
            # logins are limited per client address
            codes = [
                (await c.post("/v1/auth/login", json={"email": "a@b.example", "password": "x"})).status_code
                for _ in range(4)
            ]
            assert codes[:3] == [401, 401, 401] and codes[3] == 429


async def test_login_rate_limit_keys_on_the_client_behind_trusted_proxies(database_url: str, nats_url: str) -> None:
    settings = make_settings(
        database_url, nats_url, rate_limit_per_s=0.1, rate_limit_burst=3, trusted_proxies="10.1.2.3, 10.9.0.0/16"
    )
    svc = ControlApiService(settings)
    app = svc.app()

    def client_at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://limited")

    async def logins(c: httpx.AsyncClient, n: int, headers: dict[str, str] | None = None) -> list[int]:
        body = {"email": "a@b.example", "password": "x"}
        return [(await c.post("/v1/auth/login", json=body, headers=headers)).status_code for _ in range(n)]

    async with app.router.lifespan_context(app), client_at("10.1.2.3") as proxy, client_at("203.0.113.7") as direct:
        # two clients behind the same trusted proxy have a bucket each
        assert await logins(proxy, 4, {"X-Forwarded-For": "198.51.100.1"}) == [401, 401, 401, 429]
        assert await logins(proxy, 3, {"X-Forwarded-For": "198.51.100.2"}) == [401, 401, 401]
        # through a second trusted hop, and with a forged address prepended: still the same client
        assert await logins(proxy, 1, {"X-Forwarded-For": "198.51.100.1, 10.9.4.5"}) == [429]
        assert await logins(proxy, 1, {"X-Forwarded-For": "192.0.2.99, 198.51.100.1"}) == [429]
        # the proxy's own address is a client like any other
        assert await logins(proxy, 1) == [401]

        # a client that is not a trusted proxy cannot escape its limit by naming another address
        assert await logins(direct, 4) == [401, 401, 401, 429]
        for i in range(3):
            spoofed = {"X-Forwarded-For": f"192.0.2.{i}", "Forwarded": f"for=192.0.2.{i}", "X-Real-IP": f"192.0.2.{i}"}
            assert await logins(direct, 1, spoofed) == [429]


async def _scratch_pool(postgres_server: str, suffix: str) -> tuple[asyncpg.Pool, str]:
    name = f"voice_ctl_{suffix}_{os.getpid()}"
    admin = await asyncpg.connect(f"{postgres_server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    return await db.connect(f"{postgres_server}/{name}"), name


async def _drop(postgres_server: str, name: str) -> None:
    admin = await asyncpg.connect(f"{postgres_server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_bootstrap_is_idempotent_rotates_and_respects_revocation(postgres_server: str, nats_url: str) -> None:
    pool, name = await _scratch_pool(postgres_server, "boot")
    try:
        first = make_settings("unused", nats_url, bootstrap_admin_key=SecretStr("first-bootstrap-key-123456"))
        await asyncio.gather(bootstrap(pool, first), bootstrap(pool, first))  # two replicas at once
        await bootstrap(pool, first)  # a restart
        rows = await pool.fetch("SELECT * FROM api_keys")
        assert len(rows) == 1 and rows[0]["platform_admin"] and rows[0]["role"] == "admin"
        assert rows[0]["tenant_id"] == "default" and rows[0]["revoked_at"] is None
        assert await pool.fetchval("SELECT count(*) FROM tenants") == 1

        second = make_settings("unused", nats_url, bootstrap_admin_key=SecretStr("second-bootstrap-key-123456"))
        await bootstrap(pool, second)
        keys = await pool.fetch("SELECT revoked_at IS NULL AS live FROM api_keys ORDER BY created_at")
        assert [k["live"] for k in keys] == [False, True]

        await pool.execute("UPDATE api_keys SET revoked_at = now()")
        await bootstrap(pool, second)  # revoked through the API: stays revoked
        assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 0
        actions = [r["action"] for r in await pool.fetch("SELECT action FROM audit_log ORDER BY id")]
        assert actions == ["tenant.create", "api_key.create", "api_key.create", "api_key.revoke"]
    finally:
        await pool.close()
        await _drop(postgres_server, name)
