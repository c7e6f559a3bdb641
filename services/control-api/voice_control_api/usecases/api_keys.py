"""API keys of a tenant, managed by its admins. The secret is returned once, at creation."""

from __future__ import annotations

from datetime import UTC, datetime

from ..context import AppContext
from ..models import ApiKey, ApiKeyCreate, ApiKeyCreated
from ..principal import Principal
from ..security import Role, generate_api_key, new_id
from ..store import api_keys as store
from ..store import users as user_store
from . import audit_log
from .common import Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Forbidden, InvalidField, NotFound


def _check_grant(principal: Principal, body: ApiKeyCreate) -> None:
    if body.platform_admin and not principal.platform_admin:
        raise Forbidden("only a platform admin can grant the platform-admin scope")
    if body.platform_admin and body.role != "admin":
        raise InvalidField("platform_admin", "a platform-admin key must have the admin role")
    if body.role == "supervisor" and body.user_id is None:
        raise InvalidField("user_id", "a supervisor key needs the supervisor user it acts as")
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise InvalidField("expires_at", "must be in the future")


async def create_api_key(ctx: AppContext, principal: Principal, body: ApiKeyCreate) -> ApiKeyCreated:
    """The key, with its secret (returned once). A supervisor key acts as the supervisor user it names."""
    _check_grant(principal, body)
    key = generate_api_key()
    async with transaction(ctx) as conn:
        if body.user_id is not None:
            user = await user_store.get(conn, principal.tenant_id, body.user_id)
            if user is None:
                raise InvalidField("user_id", "no such user in this tenant")
            if body.role == "supervisor" and user.role != "supervisor":
                raise InvalidField("user_id", "a supervisor key must act as a supervisor user")
        row = await store.create(
            conn,
            key_id=new_id(),
            tenant_id=principal.tenant_id,
            name=body.name,
            prefix=key.prefix,
            key_hash=key.key_hash,
            role=body.role,
            user_id=body.user_id,
            platform_admin=body.platform_admin,
            created_by=principal.actor,
            expires_at=body.expires_at,
        )
        await audit_log.record(
            conn, principal, "api_key.create", "api_key", row.id, role=body.role, platform_admin=body.platform_admin
        )
    return ApiKeyCreated(**row.model_dump(), key=key.key)


async def list_api_keys(
    ctx: AppContext, principal: Principal, paging: Pagination, *, include_revoked: bool, role: Role | None
) -> Listing[ApiKey]:
    return await fetch_page(ctx, paging, store.list_, principal.tenant_id, include_revoked=include_revoked, role=role)


async def get_api_key(ctx: AppContext, principal: Principal, key_id: str) -> ApiKey:
    async with connection(ctx) as conn:
        return found(await store.get(conn, principal.tenant_id, key_id), "API key")


async def revoke_api_key(ctx: AppContext, principal: Principal, key_id: str) -> None:
    """Effective on the next request, on every replica. Revoking twice is harmless."""
    async with transaction(ctx) as conn:
        if await store.revoke(conn, principal.tenant_id, key_id) is None:
            raise NotFound("API key")
        await audit_log.record(conn, principal, "api_key.revoke", "api_key", key_id)
