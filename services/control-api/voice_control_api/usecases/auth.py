"""Credentials: API keys and console access tokens turned into a ``Principal``; console login with rotating
refresh tokens; password change.

Every request re-reads the key or user row, so revoking a key or deactivating a user takes effect on
the very next request, on every replica.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from voice_runtime.logging import get_logger

from ..context import AppContext
from ..models import TokenPair
from ..principal import Principal
from ..security import InvalidToken, generate_refresh_token, key_matches, key_prefix, new_id, sha256_hex
from ..store import api_keys as key_store
from ..store import users as store
from ..store.api_keys import KeyCredential
from ..store.users import Credentials, UserStatus
from . import audit_log
from .common import connection, transaction
from .errors import Forbidden, Unauthenticated

log = get_logger(__name__)

LAST_USED_RESOLUTION_S = 30  # last_used_at is written at most this often per key


def key_principal(key: KeyCredential) -> Principal:
    """Who a key found in the database acts as; Unauthenticated when it may not be used now."""
    if key.revoked_at is not None:
        raise Unauthenticated("API key revoked")
    if key.expired:
        raise Unauthenticated("API key expired")
    if key.role == "supervisor" and key.user_id is None:
        raise Unauthenticated("the user of this API key is inactive")
    # a key acts for its user whatever its role: the user's deactivation ends the key's use too
    if key.user_id is not None and (key.user_active is not True or key.user_tenant != key.tenant_id):
        raise Unauthenticated("the user of this API key is inactive")
    return Principal(
        tenant_id=key.tenant_id,
        role=key.role,
        actor_type="api_key",
        actor_id=key.id,
        user_id=key.user_id,
        platform_admin=key.platform_admin,
    )


def user_principal(user: UserStatus) -> Principal:
    """A console user as a principal. The role is read from the database on every request, so a demotion
    applies at once."""
    return Principal(
        tenant_id=user.tenant_id,
        role=user.role,
        actor_type="user",
        actor_id=user.id,
        user_id=user.id,
        platform_admin=user.platform_admin,
    )


async def principal_of_api_key(ctx: AppContext, token: str) -> Principal:
    async with connection(ctx) as conn:
        key = await key_store.credential(conn, key_prefix(token), touch_after_s=LAST_USED_RESOLUTION_S)
        if key is None or not key_matches(token, key.key_hash):
            raise Unauthenticated("invalid API key")
        principal = key_principal(key)
        if key.touch:
            await key_store.touch(conn, key.id)
    return principal


async def principal_of_access_token(ctx: AppContext, token: str) -> Principal:
    try:
        claims = ctx.tokens.verify(token)
    except InvalidToken:
        raise Unauthenticated("invalid or expired access token") from None
    async with connection(ctx) as conn:
        user = await store.status(conn, claims.user_id)
    if user is None or not user.is_active or user.tenant_id != claims.tenant_id:
        raise Unauthenticated("invalid or expired access token")
    return user_principal(user)


async def check_password(ctx: AppContext, conn: asyncpg.Connection, email: str, password: str) -> Credentials:
    """The active user with this email and password. An unknown email costs the same time as a wrong password;
    a hash made with weaker parameters than today's is upgraded."""
    user = await store.credentials_by_email(conn, email)
    ok = await asyncio.to_thread(ctx.passwords.verify, user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active or user.password_hash is None:
        log.info("login_failed")
        raise Unauthenticated("invalid email or password")
    if ctx.passwords.needs_rehash(user.password_hash):
        await store.set_password_hash(conn, user.id, ctx.passwords.hash(password))
    return user


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


async def login(ctx: AppContext, email: str, password: str) -> TokenPair:
    """A short-lived access token and a refresh token. An unknown email costs the same time as a wrong password."""
    async with connection(ctx) as conn:
        user = await check_password(ctx, conn, email, password)
        async with conn.transaction():
            await store.prune_refresh_tokens(conn, user.id)
            pair = await _issue(ctx, conn, user.id, user.tenant_id, user.role)
    log.info("login", user_id=user.id, tenant_id=user.tenant_id)
    return pair


async def refresh(ctx: AppContext, refresh_token: str) -> TokenPair:
    """Refresh tokens rotate: each is accepted once. A used one presented again revokes every refresh token
    of its user (it was probably stolen)."""
    reused_by: str | None = None
    async with transaction(ctx) as conn:
        row = await store.refresh_token(conn, sha256_hex(refresh_token))
        if row is None or row.expired:
            raise Unauthenticated("invalid or expired refresh token")
        if row.revoked_at is not None:
            # committed before answering: the revocation must survive the refusal
            await store.revoke_user_refresh_tokens(conn, row.user_id)
            reused_by = row.user_id
        elif not row.is_active:
            raise Unauthenticated("user is inactive")
        else:
            await store.revoke_refresh_token(conn, row.id)
            return await _issue(ctx, conn, row.user_id, row.tenant_id, row.role)
    log.warning("refresh_token_reused", user_id=reused_by)
    raise Unauthenticated("refresh token already used; log in again")


async def logout(ctx: AppContext, refresh_token: str) -> None:
    """Revoke the refresh token (an unknown one is ignored)."""
    async with transaction(ctx) as conn:
        row = await store.refresh_token(conn, sha256_hex(refresh_token))
        if row is not None:
            await store.revoke_refresh_token(conn, row.id)


async def change_password(ctx: AppContext, principal: Principal, current: str, new: str) -> None:
    """The principal's own password (console users only); their refresh tokens are revoked."""
    if principal.actor_type != "user" or principal.user_id is None:
        raise Forbidden("only console users have passwords")
    user_id = principal.user_id
    async with connection(ctx) as conn:
        stored = await store.password_hash(conn, user_id)
        if not await asyncio.to_thread(ctx.passwords.verify, stored, current):
            raise Forbidden("current password is wrong")
        new_hash = await asyncio.to_thread(ctx.passwords.hash, new)
        async with conn.transaction():
            await store.set_password_hash(conn, user_id, new_hash)
            await store.revoke_user_refresh_tokens(conn, user_id)
            await audit_log.record(conn, principal, "user.password_change", "user", user_id)
