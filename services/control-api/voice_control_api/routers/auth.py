"""Console login: password -> short-lived access token + rotating refresh token; whoami; password change."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..context import AppContext
from ..deps import Auth, Ctx, enforce_rate_limit, errors
from ..models import LoginRequest, Me, PasswordChange, RefreshRequest, TokenPair
from ..usecases import auth

router = APIRouter(prefix="/v1/auth", tags=["auth"])


def _client_key(ctx: AppContext, request: Request) -> str:
    """Unauthenticated routes are rate limited per client address (behind trusted proxies, the client's)."""
    peer = request.client.host if request.client else None
    return "ip:" + ctx.proxies.client_address(peer, request.headers.getlist(ctx.proxies.header))


@router.post(
    "/login",
    response_model=TokenPair,
    responses=errors(401, 422, 429),
    summary="Log in with email and password",
    description="Returns a short-lived access token (use it as `Authorization: Bearer <token>`) and a refresh "
    "token for `POST /v1/auth/refresh`.",
)
async def login(body: LoginRequest, request: Request, ctx: Ctx) -> TokenPair:
    enforce_rate_limit(ctx, _client_key(ctx, request))
    return await auth.login(ctx, body.email, body.password)


@router.post(
    "/refresh",
    response_model=TokenPair,
    responses=errors(401, 422, 429),
    summary="Exchange a refresh token for a new token pair",
    description="Refresh tokens rotate: each is accepted once. Presenting a used one again revokes every "
    "refresh token of that user (it was probably stolen).",
)
async def refresh(body: RefreshRequest, request: Request, ctx: Ctx) -> TokenPair:
    enforce_rate_limit(ctx, _client_key(ctx, request))
    return await auth.refresh(ctx, body.refresh_token)


@router.post(
    "/logout",
    status_code=204,
    responses=errors(422, 429),
    summary="Revoke a refresh token",
)
async def logout(body: RefreshRequest, request: Request, ctx: Ctx) -> Response:
    enforce_rate_limit(ctx, _client_key(ctx, request))
    await auth.logout(ctx, body.refresh_token)
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
    await auth.change_password(ctx, principal, body.current_password, body.new_password)
    return Response(status_code=204)
