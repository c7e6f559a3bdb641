"""API keys of a tenant (admins manage them). The secret is shown once, at creation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response

from .. import audit
from ..deps import AUTHED, Admin, Ctx, Paging, errors
from ..models import ApiKey, ApiKeyCreate, ApiKeyCreated, Page
from ..problems import forbidden, invalid, not_found
from ..rest import IdPath, page
from ..security import Role, generate_api_key, new_id
from ..store import api_keys as store
from ..store import users as user_store

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"], responses=AUTHED)


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    description="The response holds the key (`key`) once; only its prefix is shown afterwards. A supervisor "
    "key acts as the supervisor user named by `user_id`.",
)
async def create_api_key(body: ApiKeyCreate, principal: Admin, ctx: Ctx, response: Response) -> dict[str, Any]:
    if body.platform_admin and not principal.platform_admin:
        raise forbidden("only a platform admin can grant the platform-admin scope")
    if body.platform_admin and body.role != "admin":
        raise invalid("body.platform_admin", "a platform-admin key must have the admin role")
    if body.role == "supervisor" and body.user_id is None:
        raise invalid("body.user_id", "a supervisor key needs the supervisor user it acts as")
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise invalid("body.expires_at", "must be in the future")
    key = generate_api_key()
    async with ctx.pool.acquire() as conn, conn.transaction():
        if body.user_id is not None:
            user = await user_store.get(conn, principal.tenant_id, body.user_id)
            if user is None:
                raise invalid("body.user_id", "no such user in this tenant")
            if body.role == "supervisor" and user["role"] != "supervisor":
                raise invalid("body.user_id", "a supervisor key must act as a supervisor user")
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
        await audit.record(
            conn, principal, "api_key.create", "api_key", row["id"], role=body.role, platform_admin=body.platform_admin
        )
    response.headers["Location"] = f"/v1/api-keys/{row['id']}"
    return {**row, "key": key.key}


@router.get("", response_model=Page[ApiKey], summary="List API keys")
async def list_api_keys(
    principal: Admin, ctx: Ctx, paging: Paging, include_revoked: bool = False, role: Role | None = None
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            include_revoked=include_revoked,
            role=role,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)


@router.get("/{key_id}", response_model=ApiKey, responses=errors(404), summary="Get an API key")
async def get_api_key(key_id: IdPath, principal: Admin, ctx: Ctx) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        row = await store.get(conn, principal.tenant_id, key_id)
    if row is None:
        raise not_found("API key")
    return row


@router.delete(
    "/{key_id}",
    status_code=204,
    responses=errors(404),
    summary="Revoke an API key",
    description="Takes effect on the next request, on every replica. Revoking twice is harmless.",
)
async def revoke_api_key(key_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.revoke(conn, principal.tenant_id, key_id)
        if row is None:
            raise not_found("API key")
        await audit.record(conn, principal, "api_key.revoke", "api_key", key_id)
    return Response(status_code=204)
