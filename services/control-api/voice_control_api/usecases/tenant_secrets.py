"""Tenant secrets (e.g. the API key of an agent's own LLM endpoint), managed by the tenant's admins.

A value is sealed (SecretBox, bound to its tenant and name) before it reaches PostgreSQL, and only the sealed
bytes leave control-api: to KV ``secrets``, where the services holding SECRETS_KEY open them. The plaintext is
never stored, returned, logged or written to the audit log. Without SECRETS_KEY every operation is refused.
"""

from __future__ import annotations

import asyncpg
from voice_runtime.secretbox import SecretBox

from ..context import AppContext
from ..models import TenantSecret
from ..principal import Principal
from ..store import agents as agent_store
from ..store import tenant_secrets as store
from ..store import trunks as trunk_store
from . import audit_log, dataplane
from .common import Listing, Pagination, fetch_page, found, transaction
from .errors import Conflict, InvalidField, NotConfigured


def _box(ctx: AppContext) -> SecretBox:
    if ctx.secret_box is None:
        raise NotConfigured("secrets are not configured on this deployment (SECRETS_KEY is unset)")
    return ctx.secret_box


async def put_secret(ctx: AppContext, principal: Principal, name: str, value: str) -> tuple[TenantSecret, bool]:
    """Create or replace; True when it was created. KV gets the sealed value after the commit."""
    sealed = _box(ctx).seal(principal.tenant_id, name, value)
    async with transaction(ctx) as conn:
        secret, created = await store.put(conn, principal.tenant_id, name, sealed)
        await audit_log.record(conn, principal, "secret.create" if created else "secret.update", "secret", name)
    await dataplane.publish_secret(ctx, principal.tenant_id, name)
    return secret, created


async def list_secrets(ctx: AppContext, principal: Principal, paging: Pagination) -> Listing[TenantSecret]:
    _box(ctx)
    return await fetch_page(ctx, paging, store.list_, principal.tenant_id)


async def delete_secret(ctx: AppContext, principal: Principal, name: str) -> None:
    """Refused while an agent's current version uses it; its KV key goes after the commit."""
    _box(ctx)
    async with transaction(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, name, lock="update"), "secret")
        users = await agent_store.using_secret(conn, principal.tenant_id, name)
        if users:
            raise Conflict(
                f"agents use this secret (llm.api_key_secret, a tool or an MCP server) ({', '.join(users[:5])}); "
                "change them first"
            )
        trunks = await trunk_store.using_secret(conn, principal.tenant_id, name)
        if trunks:
            raise Conflict(f"SIP trunks use this secret ({', '.join(trunks[:5])}); change them first")
        await store.delete(conn, principal.tenant_id, name)
        await audit_log.record(conn, principal, "secret.delete", "secret", name)
    await dataplane.publish_secret(ctx, principal.tenant_id, name)


async def check_reference(conn: asyncpg.Connection, tenant_id: str, field: str, name: str) -> None:
    """``name`` (in ``field``) must be a secret of ``tenant_id``; it stays until this transaction ends (a delete
    waits for it, then finds the reference)."""
    if await store.get(conn, tenant_id, name, lock="share") is None:
        raise InvalidField(field, "no such secret in this tenant")
