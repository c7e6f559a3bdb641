"""Users of a tenant (admins manage them): console logins with a role."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from fastapi import APIRouter, Response

from .. import audit
from ..deps import AUTHED, Admin, Ctx, Paging, QueryText, errors
from ..models import Page, User, UserCreate, UserUpdate
from ..problems import conflict, not_found
from ..rest import IdPath, IfMatch, check_precondition, page, set_etag
from ..security import Role, new_id
from ..store import users as store

router = APIRouter(prefix="/v1/users", tags=["users"], responses=AUTHED)


@router.post("", status_code=201, response_model=User, responses=errors(409), summary="Create a user")
async def create_user(body: UserCreate, principal: Admin, ctx: Ctx, response: Response) -> dict[str, Any]:
    password_hash = await asyncio.to_thread(ctx.passwords.hash, body.password)
    user_id = new_id()
    async with ctx.pool.acquire() as conn, conn.transaction():
        try:
            user = await store.create(
                conn,
                user_id=user_id,
                tenant_id=principal.tenant_id,
                email=body.email,
                name=body.name,
                role=body.role,
                password_hash=password_hash,
            )
        except asyncpg.UniqueViolationError:
            raise conflict("a user with this email already exists") from None
        await audit.record(conn, principal, "user.create", "user", user_id, role=body.role)
    response.headers["Location"] = f"/v1/users/{user_id}"
    set_etag(response, user["version"])
    return user


@router.get("", response_model=Page[User], summary="List users")
async def list_users(
    principal: Admin,
    ctx: Ctx,
    paging: Paging,
    role: Role | None = None,
    is_active: bool | None = None,
    email: QueryText = None,
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            role=role,
            is_active=is_active,
            email=email,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)


@router.get("/{user_id}", response_model=User, responses=errors(404), summary="Get a user")
async def get_user(user_id: IdPath, principal: Admin, ctx: Ctx, response: Response) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        user = await store.get(conn, principal.tenant_id, user_id)
    if user is None:
        raise not_found("user")
    set_etag(response, user["version"])
    return user


@router.patch(
    "/{user_id}",
    response_model=User,
    responses=errors(404, 409, 412),
    summary="Update a user (name, role, active, password)",
    description="Deactivating a user or setting their password revokes their refresh tokens; their API keys "
    "stop working while they are inactive.",
)
async def update_user(
    user_id: IdPath,
    body: UserUpdate,
    principal: Admin,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"version", "password"})
    changes = {k: v for k, v in changes.items() if v is not None or k == "name"}  # only a name can be cleared
    if body.password is not None:
        changes["password_hash"] = await asyncio.to_thread(ctx.passwords.hash, body.password)
    async with ctx.pool.acquire() as conn, conn.transaction():
        user = await store.get(conn, principal.tenant_id, user_id, for_update=True)
        if user is None:
            raise not_found("user")
        check_precondition(user["version"], if_match, body.version)
        if user_id == principal.user_id and (changes.get("role") == "supervisor" or changes.get("is_active") is False):
            raise conflict("you cannot demote or deactivate yourself")
        if changes:
            user = await store.update(conn, principal.tenant_id, user_id, changes)
            if "password_hash" in changes or changes.get("is_active") is False:
                await store.revoke_user_refresh_tokens(conn, user_id)
            await audit.record(
                conn,
                principal,
                "user.update",
                "user",
                user_id,
                fields=sorted("password" if k == "password_hash" else k for k in changes),
                version=user["version"],
            )
    set_etag(response, user["version"])
    return user


@router.delete(
    "/{user_id}",
    status_code=204,
    responses=errors(404, 409),
    summary="Delete a user",
    description="Their API keys are revoked; agents they owned become admin-owned.",
)
async def delete_user(user_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    if user_id == principal.user_id:
        raise conflict("you cannot delete yourself")
    async with ctx.pool.acquire() as conn, conn.transaction():
        user = await store.get(conn, principal.tenant_id, user_id, for_update=True)
        if user is None:
            raise not_found("user")
        await store.delete(conn, principal.tenant_id, user_id)
        await audit.record(conn, principal, "user.delete", "user", user_id)
    return Response(status_code=204)
