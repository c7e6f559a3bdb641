"""Web console sessions: sign in with email and password or with an API key, who a session acts as, sign out.

The cookie holds a random token; PostgreSQL holds its SHA-256 and the user or key the session acts as. Each request
re-reads that user or key with the same checks as the API's (``auth.user_principal``, ``auth.key_principal``), so a
session is never worth more than the credential it was opened with: a demotion, a deactivation or a revoked key
applies on the next request, on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from voice_runtime.logging import get_logger

from ..context import AppContext
from ..principal import Principal
from ..security import SESSION_PREFIX, generate_session_token, sha256_hex
from ..store import api_keys as key_store
from ..store import sessions as store
from ..store import tenants as tenant_store
from ..store import users as user_store
from . import auth
from .common import connection, transaction
from .errors import Unauthenticated

log = get_logger(__name__)
TOKEN_MAX_LEN = 100


@dataclass(frozen=True)
class NewSession:
    token: str  # the cookie's value; only its hash is stored
    principal: Principal
    max_age_s: int


async def _open(ctx: AppContext, principal: Principal) -> NewSession:
    token, token_hash = generate_session_token()
    ttl = ctx.settings.console_session_ttl_s
    async with transaction(ctx) as conn:
        await store.prune(conn)
        await store.create(
            conn,
            session_hash=token_hash,
            tenant_id=principal.tenant_id,
            user_id=principal.user_id if principal.actor_type == "user" else None,
            api_key_id=principal.actor_id if principal.actor_type == "api_key" else None,
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        )
    log.info("console_sign_in", tenant_id=principal.tenant_id, actor=principal.actor)
    return NewSession(token=token, principal=principal, max_age_s=ttl)


async def sign_in_with_password(ctx: AppContext, email: str, password: str) -> NewSession:
    async with connection(ctx) as conn:
        user = await auth.check_password(ctx, conn, email, password)
    return await _open(ctx, auth.user_principal(user))


async def sign_in_with_api_key(ctx: AppContext, key: str) -> NewSession:
    key = key.strip()
    if not 8 <= len(key) <= 4096:
        raise Unauthenticated("invalid API key")
    return await _open(ctx, await auth.principal_of_api_key(ctx, key))


def plausible(token: str | None) -> bool:
    """Whether a cookie value could be a session token at all (anything else is not looked up)."""
    return token is not None and token.startswith(SESSION_PREFIX) and 20 <= len(token) <= TOKEN_MAX_LEN


async def principal_of_session(ctx: AppContext, token: str) -> Principal:
    if not plausible(token):
        raise Unauthenticated("not signed in")
    async with connection(ctx) as conn:
        row = await store.get(conn, sha256_hex(token))
    if row is None or row.revoked_at is not None or row.expired:
        raise Unauthenticated("session expired or signed out; sign in again")
    if row.user is not None:
        if not row.user.is_active or row.user.tenant_id != row.tenant_id:
            raise Unauthenticated("this user is inactive")
        return auth.user_principal(row.user)
    if row.key is not None and row.key.tenant_id == row.tenant_id:
        return auth.key_principal(row.key)
    raise Unauthenticated("session expired or signed out; sign in again")


async def sign_out(ctx: AppContext, token: str) -> None:
    """Ends the session (an unknown token is ignored)."""
    if not plausible(token):
        return
    async with transaction(ctx) as conn:
        await store.revoke(conn, sha256_hex(token))


@dataclass(frozen=True)
class Identity:
    """How the console names who is signed in."""

    who: str  # a user's email, or an API key's name and prefix
    tenant_name: str


async def identity(ctx: AppContext, principal: Principal) -> Identity:
    async with connection(ctx) as conn:
        tenant = await tenant_store.get(conn, principal.tenant_id)
        if principal.actor_type == "user" and principal.user_id is not None:
            user = await user_store.get(conn, principal.tenant_id, principal.user_id)
            who = user.email if user else "user"
        else:
            key = await key_store.get(conn, principal.tenant_id, principal.actor_id)
            who = f"API key {key.name} ({key.prefix})" if key else "API key"
    return Identity(who=who, tenant_name=tenant.name if tenant else principal.tenant_id)
