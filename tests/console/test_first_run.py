"""A first run that needs nothing: on a new database control-api makes the first platform admin and stores the default
agent, once, whatever the number of replicas starting at the same time."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr
from voice_control_api.security import Passwords
from voice_control_api.settings import ControlApiSettings
from voice_control_api.usecases.bootstrap import DEFAULT_AGENT_NAME, first_run
from voice_runtime import db

pytestmark = pytest.mark.integration

PASSWORDS = Passwords(PasswordHasher(time_cost=1, memory_cost=8192))


@pytest.fixture
async def pool(postgres_server: str) -> AsyncIterator[asyncpg.Pool]:
    name = f"voice_first_run_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{postgres_server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    p = await db.connect(f"{postgres_server}/{name}")
    try:
        yield p
    finally:
        await p.close()
        admin = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def settings(**values: Any) -> ControlApiSettings:
    return ControlApiSettings(**{"bootstrap_admin_email": "Admin@Example.com", **values})


async def users(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT email, role, platform_admin, tenant_id, password_hash FROM users")


async def test_a_given_password_makes_one_platform_admin_and_the_default_agent(pool: asyncpg.Pool) -> None:
    s = settings(bootstrap_admin_password=SecretStr("first-run password"))
    await asyncio.gather(first_run(pool, s, PASSWORDS), first_run(pool, s, PASSWORDS))  # two replicas at once
    await first_run(pool, s, PASSWORDS)  # a restart
    [user] = await users(pool)
    assert (user["email"], user["role"], user["platform_admin"], user["tenant_id"]) == (
        "admin@example.com",
        "admin",
        True,
        "default",
    )
    assert PASSWORDS.verify(user["password_hash"], "first-run password")
    [agent] = await pool.fetch("SELECT id, tenant_id, name, current_version, owner_user_id FROM agents")
    assert dict(agent) == {
        "id": "default-agent",
        "tenant_id": "default",
        "name": DEFAULT_AGENT_NAME,
        "current_version": 1,
        "owner_user_id": None,
    }
    config = await pool.fetchval("SELECT config FROM agent_versions WHERE agent_id = 'default-agent'")
    assert "helpful phone assistant" in config  # the configuration the data plane fell back to
    actions = [r["action"] for r in await pool.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["tenant.create", "user.create", "agent.create"]


async def test_a_generated_password_goes_to_its_file_only_and_the_file_goes_once_changed(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "admin-password"
    s = settings(bootstrap_admin_password_file=path)
    await first_run(pool, s, PASSWORDS)
    password = path.read_text().strip()
    assert len(password) >= 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [user] = await users(pool)
    assert PASSWORDS.verify(user["password_hash"], password)

    await first_run(pool, s, PASSWORDS)  # a restart: same user, same file
    assert path.read_text().strip() == password and len(await users(pool)) == 1

    await pool.execute("UPDATE users SET password_hash = $1", PASSWORDS.hash("changed by the admin"))
    await first_run(pool, s, PASSWORDS)
    assert not path.exists()  # it would only mislead now


async def test_without_a_password_or_file_no_admin_is_made_but_the_agent_is(pool: asyncpg.Pool) -> None:
    await first_run(pool, settings(), PASSWORDS)
    assert await users(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM agents") == 1


async def test_an_existing_user_means_no_first_admin(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await pool.execute("INSERT INTO tenants (id, name) VALUES ('t1', 'T1')")
    await pool.execute(
        "INSERT INTO users (id, tenant_id, email, role, password_hash)"
        " VALUES ('u1', 't1', 'x@example.com', 'admin', 'h')"
    )
    path = tmp_path / "admin-password"
    await first_run(pool, settings(bootstrap_admin_password_file=path), PASSWORDS)
    assert [u["email"] for u in await users(pool)] == ["x@example.com"]
    assert not path.exists()


async def test_a_deleted_default_agent_stays_deleted(pool: asyncpg.Pool) -> None:
    await first_run(pool, settings(), PASSWORDS)
    await pool.execute("UPDATE agents SET deleted_at = now() WHERE id = 'default-agent'")
    await first_run(pool, settings(), PASSWORDS)
    assert await pool.fetchval("SELECT count(*) FROM agents WHERE deleted_at IS NULL") == 0
    await first_run(pool, settings(bootstrap_default_agent=False), PASSWORDS)
    assert await pool.fetchval("SELECT count(*) FROM agents") == 1


def test_settings_refuse_a_bad_email_or_a_short_password() -> None:
    with pytest.raises(ValueError, match="bootstrap_admin_email"):
        settings(bootstrap_admin_email="admin")
    with pytest.raises(ValueError, match="bootstrap_admin_password") as refused:
        settings(bootstrap_admin_password=SecretStr("short"))
    assert "short" not in str(refused.value).replace("bootstrap_admin_password", "")
