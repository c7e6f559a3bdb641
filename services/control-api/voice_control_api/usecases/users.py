"""Users of a tenant (console logins with a role), managed by its admins."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from ..context import AppContext
from ..models import User, UserCreate, UserUpdate
from ..principal import Principal
from ..security import Role, new_id
from ..store import users as store
from . import audit_log
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict


async def create_user(ctx: AppContext, principal: Principal, body: UserCreate) -> User:
    password_hash = await asyncio.to_thread(ctx.passwords.hash, body.password)
    user_id = new_id()
    async with transaction(ctx) as conn:
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
            raise Conflict("a user with this email already exists") from None
        await audit_log.record(conn, principal, "user.create", "user", user_id, role=body.role)
    return user


async def list_users(
    ctx: AppContext,
    principal: Principal,
    paging: Pagination,
    *,
    role: Role | None,
    is_active: bool | None,
    email: str | None,
) -> Listing[User]:
    return await fetch_page(ctx, paging, store.list_, principal.tenant_id, role=role, is_active=is_active, email=email)


async def get_user(ctx: AppContext, principal: Principal, user_id: str) -> User:
    async with connection(ctx) as conn:
        return found(await store.get(conn, principal.tenant_id, user_id), "user")


async def update_user(
    ctx: AppContext, principal: Principal, user_id: str, body: UserUpdate, expected: ExpectedVersion
) -> User:
    """Deactivating a user or setting their password revokes their refresh tokens. Nobody demotes or
    deactivates themselves."""
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"version", "password"})
    changes = {k: v for k, v in changes.items() if v is not None or k == "name"}  # only a name can be cleared
    if body.password is not None:
        changes["password_hash"] = await asyncio.to_thread(ctx.passwords.hash, body.password)
    async with transaction(ctx) as conn:
        user = found(await store.get(conn, principal.tenant_id, user_id, for_update=True), "user")
        expected.check(user.version)
        if user_id == principal.user_id and (changes.get("role") == "supervisor" or changes.get("is_active") is False):
            raise Conflict("you cannot demote or deactivate yourself")
        if changes:
            user = await store.update(conn, principal.tenant_id, user_id, changes)
            if "password_hash" in changes or changes.get("is_active") is False:
                await store.revoke_user_refresh_tokens(conn, user_id)
            await audit_log.record(
                conn,
                principal,
                "user.update",
                "user",
                user_id,
                fields=sorted("password" if k == "password_hash" else k for k in changes),
                version=user.version,
            )
    return user


async def delete_user(ctx: AppContext, principal: Principal, user_id: str) -> None:
    """Their API keys are revoked; the agents they owned become admin-owned."""
    if user_id == principal.user_id:
        raise Conflict("you cannot delete yourself")
    async with transaction(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, user_id, for_update=True), "user")
        await store.delete(conn, principal.tenant_id, user_id)
        await audit_log.record(conn, principal, "user.delete", "user", user_id)
