"""Console login: password -> short-lived access token + rotating refresh token."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from fastapi import APIRouter, Request, Response
from voice_runtime.logging import get_logger

from .. import audit
from ..auth import enforce_rate_limit
from ..context import AppContext
from ..deps import Auth, Ctx, errors
from ..models import LoginRequest, Me, PasswordChange, RefreshRequest, TokenPair
from ..problems import ApiError, unauthorized
from ..security import generate_refresh_token, new_id, sha256_hex
from ..store import users as store

log = get_logger(__name__)
router = APIRouter(prefix="/v1/auth", tags=["auth"])


def _client_key(request: Request) -> str:
    return "ip:" + (request.client.host if request.client else "unknown")


async def _issue(ctx: AppContext, conn: asyncpg.Connection, user_id: str, tenant_id: str, role: str) -> TokenPair:
    token, token_hash = generate_refresh_token()
    await store.add_refresh_token(
        conn,
        token_id=new_id(),
        user_id=user_id,
        tenant_id=tenant_id,
        token_hash=token_hash,
        expires_at=datetime.now(UTC) + timedelta(seconds=ctx.settings.refresh_token_ttl_s),
    )
    return TokenPair(
        access_token=ctx.tokens.issue(user_id, tenant_id, role),
        refresh_token=token,
        expires_in=ctx.tokens.ttl_s,
    )


@router.post(
    "/login",
    response_model=TokenPair,
    responses=errors(401, 422, 429),
    summary="Log in with email and password",
    description="Returns a short-lived access token (use it as `Authorization: Bearer <token>`) and a refresh "
    "token for `POST /v1/auth/refresh`.",
)
async def login(body: LoginRequest, request: Request, ctx: Ctx) -> TokenPair:
    enforce_rate_limit(ctx, _client_key(request))
    async with ctx.pool.acquire() as conn:
        row = await store.credentials_by_email(conn, body.email)
        ok = await asyncio.to_thread(ctx.passwords.verify, row["password_hash"] if row else None, body.password)
        if row is None or not ok or not row["is_active"]:
            log.info("login_failed")
            raise unauthorized("invalid email or password")
        async with conn.transaction():
            if ctx.passwords.needs_rehash(row["password_hash"]):
                await store.set_password_hash(conn, row["id"], ctx.passwords.hash(body.password))
            await store.prune_refresh_tokens(conn, row["id"])
            pair = await _issue(ctx, conn, row["id"], row["tenant_id"], row["role"])
    log.info("login", user_id=row["id"], tenant_id=row["tenant_id"])
    return pair


@router.post(
    "/refresh",
    response_model=TokenPair,
    responses=errors(401, 422, 429),
    summary="Exchange a refresh token for a new token pair",
    description="Refresh tokens rotate: each is accepted once. Presenting a used one again revokes every "
    "refresh token of that user (it was probably stolen).",
)
async def refresh(body: RefreshRequest, request: Request, ctx: Ctx) -> TokenPair:
    enforce_rate_limit(ctx, _client_key(request))
    reused_by: str | None = None
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.refresh_token(conn, sha256_hex(body.refresh_token))
        if row is None or row["expired"]:
            raise unauthorized("invalid or expired refresh token")
        if row["revoked_at"] is not None:
            # committed before answering: the revocation must survive the 401
            await store.revoke_user_refresh_tokens(conn, row["user_id"])
            reused_by = row["user_id"]
        elif not row["is_active"]:
            raise unauthorized("user is inactive")
        else:
            await store.revoke_refresh_token(conn, row["id"])
            return await _issue(ctx, conn, row["user_id"], row["tenant_id"], row["role"])
    log.warning("refresh_token_reused", user_id=reused_by)
    raise unauthorized("refresh token already used; log in again")


@router.post(
    "/logout",
    status_code=204,
    responses=errors(422, 429),
    summary="Revoke a refresh token",
)
async def logout(body: RefreshRequest, request: Request, ctx: Ctx) -> Response:
    enforce_rate_limit(ctx, _client_key(request))
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.refresh_token(conn, sha256_hex(body.refresh_token))
        if row is not None:
            await store.revoke_refresh_token(conn, row["id"])
    return Response(status_code=204)


@router.get("/me", response_model=Me, responses=errors(401, 429), summary="Who this credential is")
async def me(principal: Auth) -> Me:
    return Me(
        tenant_id=principal.tenant_id,
        role=principal.role,
        actor_type=principal.actor_type,
        actor_id=principal.actor_id,
        user_id=principal.user_id,
        platform_admin=principal.platform_admin,
    )


@router.post(
    "/password",
    status_code=204,
    responses=errors(401, 403, 422, 429),
    summary="Change your own password (console users)",
    description="Revokes your refresh tokens: other sessions must log in again.",
)
async def change_password(body: PasswordChange, principal: Auth, ctx: Ctx) -> Response:
    if principal.actor_type != "user" or principal.user_id is None:
        raise ApiError(403, "only console users have passwords")
    async with ctx.pool.acquire() as conn:
        current = await store.password_hash(conn, principal.user_id)
        if not await asyncio.to_thread(ctx.passwords.verify, current, body.current_password):
            raise ApiError(403, "current password is wrong")
        new_hash = await asyncio.to_thread(ctx.passwords.hash, body.new_password)
        async with conn.transaction():
            await store.set_password_hash(conn, principal.user_id, new_hash)
            await store.revoke_user_refresh_tokens(conn, principal.user_id)
            await audit.record(conn, principal, "user.password_change", "user", principal.user_id)
    return Response(status_code=204)
