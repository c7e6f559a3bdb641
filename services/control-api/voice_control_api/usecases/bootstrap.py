"""Start-up chores: the first tenant, the platform-admin key (BOOTSTRAP_ADMIN_KEY), the first platform-admin user
and the default agent of a new database, and the JWT signing secret.

A first run needs nothing configured: on a database without any console user, the first admin is made (email
BOOTSTRAP_ADMIN_EMAIL; password BOOTSTRAP_ADMIN_PASSWORD, or a generated one written to the 0600 file
BOOTSTRAP_ADMIN_PASSWORD_FILE, which `make run` prints), and the default agent, until now only a fallback in the
data plane's code, becomes a stored agent like any other: listed, edited, versioned, mirrored to KV by the resync
that follows start-up. A password never reaches the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

import asyncpg
from voice_runtime.agents import default_agent
from voice_runtime.logging import get_logger

from ..security import Passwords, key_prefix, new_id, sha256_hex
from ..settings import ControlApiSettings
from ..store import agents, api_keys, tenants, users
from ..store import secrets as platform_secrets
from . import default_agent_spec
from .audit_log import record

log = get_logger(__name__)
_LOCK = 0x766F6963_62  # "voicb": one replica bootstraps at a time
DEFAULT_AGENT_NAME = "Default agent"
GENERATED_PASSWORD_BYTES = 12  # 16 URL-safe characters


async def first_run(pool: asyncpg.Pool, settings: ControlApiSettings, passwords: Passwords) -> None:
    """What a new database gets without any configuration: the first admin user and the stored default agent."""
    await first_admin(pool, settings, passwords)
    await stored_default_agent(pool, settings)


async def _ensure_tenant(conn: asyncpg.Connection, settings: ControlApiSettings) -> None:
    tenant_id = settings.default_tenant_id
    if await tenants.ensure(conn, tenant_id, settings.bootstrap_tenant_name):
        await record(conn, None, "tenant.create", "tenant", tenant_id, tenant_id=tenant_id, by="bootstrap")
        log.info("bootstrap_tenant_created", tenant_id=tenant_id)


async def bootstrap(pool: asyncpg.Pool, settings: ControlApiSettings) -> None:
    """With BOOTSTRAP_ADMIN_KEY set: make sure the first tenant exists and that exact key is a platform-admin
    key (and an admin of that tenant). Idempotent across restarts and replicas. Changing the value rotates
    the key: the previous bootstrap key is revoked. A bootstrap key revoked through the API stays revoked."""
    secret = settings.bootstrap_admin_key.get_secret_value().strip() if settings.bootstrap_admin_key else ""
    if not secret:
        return
    if len(secret) < 16:
        log.warning("bootstrap_admin_key_weak", hint="use at least 16 random characters")
    tenant_id = settings.default_tenant_id
    key_hash = sha256_hex(secret)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await _ensure_tenant(conn, settings)
        existing = await api_keys.by_hash(conn, key_hash)
        if existing is None:
            row = await api_keys.create(
                conn,
                key_id=new_id(),
                tenant_id=tenant_id,
                name="bootstrap admin key",
                prefix=key_prefix(secret),
                key_hash=key_hash,
                role="admin",
                platform_admin=True,
                source="bootstrap",
                created_by="bootstrap",
            )
            await record(
                conn,
                None,
                "api_key.create",
                "api_key",
                row.id,
                tenant_id=tenant_id,
                by="bootstrap",
                platform_admin=True,
            )
            log.info("bootstrap_key_created", key_id=row.id)
        elif existing.revoked_at is not None:
            log.warning(
                "bootstrap_key_revoked",
                key_id=existing.id,
                hint="set BOOTSTRAP_ADMIN_KEY to a new value to get a working platform-admin key",
            )
        for key_id in await api_keys.revoke_other_bootstrap_keys(conn, key_hash):
            await record(
                conn,
                None,
                "api_key.revoke",
                "api_key",
                key_id,
                tenant_id=tenant_id,
                by="bootstrap",
                reason="BOOTSTRAP_ADMIN_KEY changed",
            )
            log.info("bootstrap_key_rotated", revoked_key_id=key_id)


def _write_secret_file(path: Path, value: str) -> None:
    """``value`` alone in ``path``, readable by its owner only (0600 from creation, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


async def first_admin(pool: asyncpg.Pool, settings: ControlApiSettings, passwords: Passwords) -> None:
    """On a database without any console user: the first admin (a platform admin of the first tenant).

    Its password is BOOTSTRAP_ADMIN_PASSWORD, else a generated one written to BOOTSTRAP_ADMIN_PASSWORD_FILE;
    with neither, no user is made. Later starts change nothing, except that a generated password's file is
    removed once the admin has changed that password (it would only mislead)."""
    given = settings.bootstrap_admin_password.get_secret_value() if settings.bootstrap_admin_password else ""
    path = settings.bootstrap_admin_password_file
    email = settings.bootstrap_admin_email
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        if await users.any_user(conn):
            if not given and path is not None:
                await _forget_changed_password(conn, passwords, email, path)
            return
        if not given and path is None:
            log.info(
                "bootstrap_admin_skipped",
                hint="set BOOTSTRAP_ADMIN_PASSWORD (or BOOTSTRAP_ADMIN_PASSWORD_FILE) for a first admin user, or "
                "sign in to the console with BOOTSTRAP_ADMIN_KEY",
            )
            return
        password = given or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        password_hash = await asyncio.to_thread(passwords.hash, password)
        if not given:
            assert path is not None
            try:
                await asyncio.to_thread(_write_secret_file, path, password)
            except OSError as e:
                log.warning("bootstrap_admin_skipped", reason="password file not writable", error=type(e).__name__)
                return
        await _ensure_tenant(conn, settings)
        user = await users.create(
            conn,
            user_id=new_id(),
            tenant_id=settings.default_tenant_id,
            email=email,
            name="Administrator",
            role="admin",
            password_hash=password_hash,
            platform_admin=True,
        )
        await record(
            conn, None, "user.create", "user", user.id, tenant_id=user.tenant_id, by="bootstrap", platform_admin=True
        )
    log.info("bootstrap_admin_created", user_id=user.id, password_file=str(path) if not given else None)


async def _forget_changed_password(conn: asyncpg.Connection, passwords: Passwords, email: str, path: Path) -> None:
    try:
        written = (await asyncio.to_thread(path.read_text)).strip()
    except OSError:
        return
    stored = await users.credentials_by_email(conn, email)
    still = stored is not None and await asyncio.to_thread(passwords.verify, stored.password_hash, written)
    if not still:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.unlink)
        log.info("bootstrap_password_file_removed", reason="the first admin's password was changed")


async def stored_default_agent(pool: asyncpg.Pool, settings: ControlApiSettings) -> None:
    """The default agent (DEFAULT_AGENT_ID of DEFAULT_TENANT_ID) as a stored agent, when no agent with that id ever
    existed: the same configuration the data plane falls back to, now editable. Deleted, it stays deleted."""
    if not settings.bootstrap_default_agent:
        return
    prepared = None
    if settings.bootstrap_default_agent_spec is not None:  # read and parsed only for a first store
        async with pool.acquire() as conn:
            if await agents.ever_existed(conn, settings.default_agent_id):
                return
        prepared = await default_agent_spec.prepare(settings, settings.bootstrap_default_agent_spec)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        if await agents.ever_existed(conn, settings.default_agent_id):
            return
        await _ensure_tenant(conn, settings)
        config = default_agent(settings).model_copy(update={"name": DEFAULT_AGENT_NAME})
        if prepared is not None:  # e.g. `make run`'s demo restaurant: its knowledge base, tools and intents
            config = await default_agent_spec.apply(conn, prepared, config, settings)
        await agents.create(conn, config=config, owner_user_id=None, created_by="bootstrap")
        await record(
            conn, None, "agent.create", "agent", config.id, tenant_id=config.tenant_id, by="bootstrap", version=1
        )
    log.info("bootstrap_default_agent_created", agent_id=settings.default_agent_id)


async def signing_secret(pool: asyncpg.Pool, settings: ControlApiSettings) -> str:
    """JWT_SECRET, or a random secret generated once and shared by every replica through PostgreSQL."""
    if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        return settings.jwt_secret.get_secret_value()
    async with pool.acquire() as conn:
        return await platform_secrets.ensure(conn, "jwt", secrets.token_urlsafe(48))
