"""Who is calling: API keys and console access tokens turned into a ``Principal``, role checks, rate limit.

Every request re-reads the key or user row, so revoking a key or deactivating a user takes effect on
the very next request, on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .context import AppContext, get_ctx
from .problems import ApiError, forbidden, unauthorized
from .security import InvalidToken, Role, key_matches, key_prefix, looks_like_jwt

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`vk_...`) or a console access token from `POST /v1/auth/login`.",
)

LAST_USED_RESOLUTION_S = 30


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    role: Role
    actor_type: Literal["api_key", "user"]
    actor_id: str
    user_id: str | None
    platform_admin: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner_filter(self) -> str | None:
        """Supervisors see only what they own: the user id to filter on, or None for admins."""
        if self.is_admin:
            return None
        return self.user_id or "!none"  # never a valid id: a supervisor without a user owns nothing

    @property
    def actor(self) -> str:
        return f"{self.actor_type}:{self.actor_id}"


async def _from_api_key(ctx: AppContext, token: str) -> Principal:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            SELECT k.id, k.tenant_id, k.key_hash, k.role, k.user_id, k.platform_admin, k.revoked_at,
                   (k.expires_at IS NOT NULL AND k.expires_at <= now()) AS expired,
                   (k.last_used_at IS NULL OR k.last_used_at < now() - make_interval(secs => $2)) AS touch,
                   u.is_active AS user_active, u.tenant_id AS user_tenant
            FROM api_keys k LEFT JOIN users u ON u.id = k.user_id
            WHERE k.prefix = $1
            """,
            key_prefix(token),
            LAST_USED_RESOLUTION_S,
        )
        if row is None or not key_matches(token, row["key_hash"]):
            raise unauthorized("invalid API key")
        if row["revoked_at"] is not None:
            raise unauthorized("API key revoked")
        if row["expired"]:
            raise unauthorized("API key expired")
        if row["role"] == "supervisor" and (not row["user_active"] or row["user_tenant"] != row["tenant_id"]):
            raise unauthorized("the user of this API key is inactive")
        if row["touch"]:
            await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"])
    return Principal(
        tenant_id=row["tenant_id"],
        role=row["role"],
        actor_type="api_key",
        actor_id=row["id"],
        user_id=row["user_id"],
        platform_admin=bool(row["platform_admin"]),
    )


async def _from_access_token(ctx: AppContext, token: str) -> Principal:
    try:
        claims = ctx.tokens.verify(token)
    except InvalidToken:
        raise unauthorized("invalid or expired access token") from None
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT id, tenant_id, role, is_active FROM users WHERE id = $1", claims.user_id)
    if row is None or not row["is_active"] or row["tenant_id"] != claims.tenant_id:
        raise unauthorized("invalid or expired access token")
    # the role is read from the database, so a demotion applies before the token expires
    return Principal(
        tenant_id=row["tenant_id"],
        role=row["role"],
        actor_type="user",
        actor_id=row["id"],
        user_id=row["id"],
    )


def enforce_rate_limit(ctx: AppContext, key: str) -> None:
    wait = ctx.limiter.acquire(key)
    if wait > 0:
        raise ApiError(
            429,
            "rate limit exceeded for this credential",
            kind="rate-limited",
            headers={"Retry-After": ctx.limiter.retry_after_header(wait)},
        )


async def authenticate(request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
    ctx = get_ctx(request)
    if creds is None or not creds.credentials:
        raise unauthorized("missing Authorization: Bearer <API key or access token>")
    token = creds.credentials.strip()
    if not 8 <= len(token) <= 4096:
        raise unauthorized("invalid credentials")
    principal = await (_from_access_token(ctx, token) if looks_like_jwt(token) else _from_api_key(ctx, token))
    enforce_rate_limit(ctx, principal.actor)
    request.state.principal = principal
    return principal


async def require_admin(principal: Principal = Depends(authenticate)) -> Principal:
    if not principal.is_admin:
        raise forbidden("admin role required")
    return principal


async def require_platform_admin(principal: Principal = Depends(authenticate)) -> Principal:
    if not principal.platform_admin:
        raise forbidden("platform admin scope required")
    return principal
