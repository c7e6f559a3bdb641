"""Start-up chores: the bootstrap tenant and platform-admin key, and the JWT signing secret."""

from __future__ import annotations

import secrets

import asyncpg
from voice_runtime.logging import get_logger

from ..security import key_prefix, new_id, sha256_hex
from ..settings import ControlApiSettings
from ..store import api_keys, tenants
from ..store import secrets as platform_secrets
from .audit_log import record

log = get_logger(__name__)
_LOCK = 0x766F6963_62  # "voicb": one replica bootstraps at a time


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
        if await tenants.ensure(conn, tenant_id, settings.bootstrap_tenant_name):
            await record(conn, None, "tenant.create", "tenant", tenant_id, tenant_id=tenant_id, by="bootstrap")
            log.info("bootstrap_tenant_created", tenant_id=tenant_id)
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


async def signing_secret(pool: asyncpg.Pool, settings: ControlApiSettings) -> str:
    """JWT_SECRET, or a random secret generated once and shared by every replica through PostgreSQL."""
    if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        return settings.jwt_secret.get_secret_value()
    async with pool.acquire() as conn:
        return await platform_secrets.ensure(conn, "jwt", secrets.token_urlsafe(48))
