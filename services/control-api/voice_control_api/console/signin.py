"""Signing in and out of the console (email and password, or an API key), and the viewer's own account."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from ..context import AppContext
from ..deps import SESSION_COOKIE, enforce_rate_limit
from ..models import LoginRequest, PasswordChange
from ..usecases import auth, sessions
from ..usecases.errors import Forbidden, Unauthenticated
from .web import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    ConsoleRoute,
    Ctx,
    Signed,
    clear_cookie,
    form_fields,
    new_login_csrf,
    page,
    problems_of,
    safe_next,
    see_other,
    set_cookie,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
LOGIN_CSRF_MAX_AGE_S = 3600


def _client_key(ctx: AppContext, request: Request) -> str:
    """Sign-in attempts are rate limited per client address, like the API's login."""
    peer = request.client.host if request.client else None
    return "ip:" + ctx.proxies.client_address(peer, request.headers.getlist(ctx.proxies.header))


def _login_page(
    request: Request, ctx: Ctx, *, status: int = 200, errors: list[str] | None = None, **values: str
) -> Response:
    token = new_login_csrf()
    response = page(
        request,
        "login.html",
        None,
        status=status,
        csrf_token=token,
        next=safe_next(values.get("next") or request.query_params.get("next"), ""),
        email=values.get("email", ""),
        method=values.get("method", "password"),
        login_errors=errors or [],
    )
    set_cookie(response, ctx, request, LOGIN_CSRF_COOKIE, token, LOGIN_CSRF_MAX_AGE_S)
    return response


@router.get("/")
async def home() -> Response:
    return see_other("/agents")


@router.get("/login")
async def login_form(request: Request, ctx: Ctx) -> Response:
    return _login_page(request, ctx)


@router.post("/login")
async def login(request: Request, ctx: Ctx) -> Response:
    form = await form_fields(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    presented = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(expected, presented):
        return _login_page(
            request, ctx, status=403, errors=["The sign-in form expired or was not sent from this page; try again."]
        )
    enforce_rate_limit(ctx, _client_key(ctx, request))
    method = form.get("method", "password")
    values = {"next": form.get("next", ""), "email": form.get("email", ""), "method": method}
    try:
        if method == "api_key":
            session = await sessions.sign_in_with_api_key(ctx, form.get("api_key", ""))
        else:
            body = LoginRequest(email=form.get("email", ""), password=form.get("password", ""))
            session = await sessions.sign_in_with_password(ctx, body.email, body.password)
    except ValidationError as e:
        return _login_page(request, ctx, status=422, errors=problems_of(e), **values)
    except Unauthenticated as e:
        return _login_page(request, ctx, status=401, errors=[str(e)], **values)
    response = see_other(safe_next(form.get("next")))
    set_cookie(response, ctx, request, SESSION_COOKIE, session.token, session.max_age_s)
    clear_cookie(response, ctx, request, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, ctx: Ctx, viewer: Signed) -> Response:
    await sessions.sign_out(ctx, request.cookies.get(SESSION_COOKIE, ""))
    response = see_other("/login", "signed-out")
    clear_cookie(response, ctx, request, SESSION_COOKIE)
    return response


@router.get("/account")
async def account(request: Request, viewer: Signed) -> Response:
    return page(request, "account.html", viewer)


@router.post("/account/password")
async def change_password(request: Request, ctx: Ctx, viewer: Signed) -> Response:
    form = await form_fields(request)
    try:
        if form.get("new_password", "") != form.get("confirm_password", ""):
            raise Forbidden("the new password and its confirmation differ")
        body = PasswordChange(
            current_password=form.get("current_password", ""), new_password=form.get("new_password", "")
        )
        await auth.change_password(ctx, viewer.principal, body.current_password, body.new_password)
    except (ValidationError, Forbidden) as e:
        return page(request, "account.html", viewer, status=400, errors=problems_of(e))
    # changing a password ends every session of the user, this one included
    response = see_other("/login", "password-changed")
    clear_cookie(response, ctx, request, SESSION_COOKIE)
    return response
