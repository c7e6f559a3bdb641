"""The FastAPI dependencies of the routers (the running context, the caller, paging, query types) and the
error responses they document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator

from .context import AppContext
from .fields import clean_text, to_utc
from .principal import Principal
from .problems import ApiError, forbidden, unauthorized
from .rest import pagination
from .security import csrf_matches, looks_like_jwt
from .usecases import auth, sessions
from .usecases.common import Pagination

SESSION_COOKIE = "voice_session"  # the web console's session (HttpOnly, SameSite=Lax)
CSRF_HEADER = "X-CSRF-Token"  # what the console's scripts send with a session on a state-changing request
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`vk_...`) or a console access token from `POST /v1/auth/login`.",
)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext | None = getattr(request.app.state, "ctx", None)
    if ctx is None:
        raise ApiError(503, "service is starting", headers={"Retry-After": "1"})
    return ctx


def enforce_rate_limit(ctx: AppContext, key: str) -> None:
    wait = ctx.limiter.acquire(key)
    if wait > 0:
        raise ApiError(
            429,
            "rate limit exceeded for this credential",
            kind="rate-limited",
            headers={"Retry-After": ctx.limiter.retry_after_header(wait)},
        )


async def session_principal(ctx: AppContext, request: Request, token: str, csrf: str | None) -> Principal:
    """The caller behind a web console session. A request that changes state must carry the session's CSRF token
    (``csrf``: the X-CSRF-Token header, or the console form's field): the cookie alone, which the browser attaches
    to any request, proves nothing about who made the request."""
    principal = await sessions.principal_of_session(ctx, token)
    if request.method not in SAFE_METHODS and not csrf_matches(token, csrf):
        raise forbidden(f"a console session must send its CSRF token ({CSRF_HEADER} header) to change anything")
    return principal


async def authenticate(request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
    """The caller behind the API key or access token (or, without an Authorization header, the web console session
    cookie with its CSRF header), rate limited per credential."""
    ctx = get_ctx(request)
    if creds is None or not creds.credentials:
        session = request.cookies.get(SESSION_COOKIE)
        if not session:
            raise unauthorized("missing Authorization: Bearer <API key or access token>")
        principal = await session_principal(ctx, request, session, request.headers.get(CSRF_HEADER))
    else:
        token = creds.credentials.strip()
        if not 8 <= len(token) <= 4096:
            raise unauthorized("invalid credentials")
        if looks_like_jwt(token):
            principal = await auth.principal_of_access_token(ctx, token)
        else:
            principal = await auth.principal_of_api_key(ctx, token)
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


Ctx = Annotated[AppContext, Depends(get_ctx)]
Auth = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
PlatformAdmin = Annotated[Principal, Depends(require_platform_admin)]
Paging = Annotated[Pagination, Depends(pagination)]


QueryText = Annotated[str | None, Query(max_length=200), AfterValidator(lambda v: None if v is None else clean_text(v))]
QueryTime = Annotated[datetime | None, Query(), AfterValidator(to_utc)]

_DESCRIPTIONS = {
    401: "Missing, invalid, expired or revoked credentials",
    403: "The credential's role does not allow this",
    404: "No such resource in your tenant (another tenant's resources are never revealed)",
    409: "Conflict: a stale `version`, a duplicate, or a resource still in use",
    412: "If-Match does not match the current ETag",
    422: "Validation failed; `errors` names each field",
    429: "Rate limit exceeded; retry after `Retry-After` seconds",
    503: "Not configured on this deployment (e.g. tenant secrets without `SECRETS_KEY`)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error responses; their content (application/problem+json) is filled in by the app."""
    return {code: {"description": _DESCRIPTIONS[code]} for code in codes}


AUTHED = errors(401, 403, 422, 429)
