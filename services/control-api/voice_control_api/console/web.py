"""The console's machinery: templates, the signed-in viewer, CSRF checks, cookies, security headers, and the route
class that turns a refusal into a page.

Every page resolves its viewer the way the API resolves a caller (``deps.session_principal``: the same session,
user and key checks, the same rate limit) and then calls the same use cases, so a role sees exactly what the API
would show it. A state-changing request must carry the session's CSRF token (form field ``csrf_token`` or the
X-CSRF-Token header).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from ..context import AppContext
from ..deps import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, enforce_rate_limit, get_ctx, session_principal
from ..principal import Principal
from ..problems import ApiError, refusal
from ..security import csrf_token
from ..usecases import agents, sessions
from ..usecases.common import Pagination
from ..usecases.errors import Forbidden, InvalidField, InvalidFields, Unauthenticated, UseCaseError

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
LOGIN_CSRF_COOKIE = "voice_login_csrf"  # double-submit token of the sign-in form (no session exists yet)
REVEAL_COOKIE = "voice_reveal"  # a secret made by a form, carried to the page that shows it once
REVEAL_MAX_AGE_S = 120
CSRF_FIELD = "csrf_token"

# Scripts and styles come from /static only (no inline code), so an injected tag cannot run. media-src admits the
# microphone and the agent's WebRTC stream; connect-src keeps the page's requests on this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=()",
    "Cache-Control": "no-store",  # pages show tenant data, and some a secret once
}

# one-line confirmations after a redirect (?notice=<key>); the text never comes from the URL
NOTICES = {
    "agent-created": "Agent created (version 1).",
    "agent-saved": "Saved as a new version.",
    "agent-restored": "Restored as a new version.",
    "agent-deleted": "Agent deleted.",
    "number-added": "Number added.",
    "number-saved": "Number saved.",
    "number-deleted": "Number released.",
    "user-created": "User created.",
    "user-saved": "User saved.",
    "user-deleted": "User deleted.",
    "key-revoked": "API key revoked.",
    "webhook-saved": "Webhook saved.",
    "webhook-deleted": "Webhook deleted.",
    "password-changed": "Password changed. Other sessions of yours must sign in again.",
    "signed-out": "Signed out.",
}


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _iso
    return env


TEMPLATES = Jinja2Templates(env=_environment())


class SignInRequired(Exception):
    """No valid session: the viewer is sent to the sign-in page."""


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the page: the principal the API would see, and what the page needs to act for it."""

    principal: Principal
    csrf: str
    who: str
    tenant_name: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def platform_admin(self) -> bool:
        return self.principal.platform_admin

    @property
    def is_user(self) -> bool:
        return self.principal.actor_type == "user"


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of a submitted form (files are ignored); the last value of a repeated name wins."""
    form = await request.form()
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


async def form_list(request: Request, name: str) -> list[str]:
    form = await request.form()
    return [v for v in form.getlist(name) if isinstance(v, str)]


async def _viewer(request: Request) -> Viewer:
    ctx = get_ctx(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token is None or not sessions.plausible(token):
        raise SignInRequired()
    presented: str | None = request.headers.get(CSRF_HEADER)
    if request.method not in SAFE_METHODS and presented is None:
        presented = (await form_fields(request)).get(CSRF_FIELD)
    try:
        principal = await session_principal(ctx, request, token, presented)
    except Unauthenticated:
        raise SignInRequired() from None
    enforce_rate_limit(ctx, principal.actor)
    request.state.principal = principal  # the access log names the actor, as for the API
    who = await sessions.identity(ctx, principal)
    viewer = Viewer(principal=principal, csrf=csrf_token(token), who=who.who, tenant_name=who.tenant_name)
    request.state.viewer = viewer
    return viewer


async def _admin(viewer: Viewer = Depends(_viewer)) -> Viewer:
    # the same guard as the API's require_admin: the use cases behind admin pages trust their callers to check it
    if not viewer.is_admin:
        raise Forbidden("this page needs the admin role")
    return viewer


async def _platform_admin(viewer: Viewer = Depends(_viewer)) -> Viewer:
    if not viewer.platform_admin:
        raise Forbidden("this page needs the platform-admin scope")
    return viewer


Ctx = Annotated[AppContext, Depends(get_ctx)]
Signed = Annotated[Viewer, Depends(_viewer)]
SignedAdmin = Annotated[Viewer, Depends(_admin)]
SignedPlatformAdmin = Annotated[Viewer, Depends(_platform_admin)]


async def agent_names(ctx: AppContext, viewer: Viewer) -> dict[str, str]:
    """The agents this viewer may see, id -> name (for selects and for naming an agent in a row)."""
    out: dict[str, str] = {}
    offset = 0
    while len(out) < 1000:  # bounded: a select of more is no use anyway
        listing = await agents.list_agents(
            ctx,
            viewer.principal,
            Pagination(limit=200, offset=offset),
            is_active=None,
            name=None,
            owner_user_id=None,
        )
        out.update((a.id, a.name) for a in listing.items)
        if not listing.has_more:
            break
        offset += 200
    return out


def page(
    request: Request,
    template: str,
    viewer: Viewer | None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    values = {"viewer": viewer, "notice": notice, "errors": [], "path": request.url.path, **context}
    return TEMPLATES.TemplateResponse(request, template, values, status_code=status, headers=headers)


def see_other(url: str, notice: str | None = None) -> RedirectResponse:
    if notice is not None:
        url += ("&" if "?" in url else "?") + "notice=" + quote(notice)
    return RedirectResponse(url, status_code=303)


def problems_of(error: Exception) -> list[str]:
    """What to tell the viewer about a refused form: one line per field where the refusal names fields."""
    if isinstance(error, InvalidFields):
        error = error.error
    if isinstance(error, ValidationError):
        out = []
        for e in error.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            out.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return out
    if isinstance(error, InvalidField):
        return [f"{error.field}: {error.message}"]
    return [str(error)]


def status_of(error: Exception) -> int:
    if isinstance(error, ValidationError | InvalidFields | InvalidField):
        return 422
    if isinstance(error, UseCaseError):
        return refusal(error).status
    return 400


def is_https(ctx: AppContext, request: Request) -> bool:
    """Whether the browser reached us over https: the connection's own scheme, or X-Forwarded-Proto when the
    connection comes from a trusted proxy (anyone else's header is not believed)."""
    if request.url.scheme == "https":
        return True
    if not ctx.proxies.trusts_peer(request.client.host if request.client else None):
        return False
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https"


def secure_cookies(ctx: AppContext, request: Request) -> bool:
    mode = ctx.settings.console_secure_cookies
    return mode == "always" or (mode == "auto" and is_https(ctx, request))


def set_cookie(response: Response, ctx: AppContext, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure_cookies(ctx, request),
    )


def clear_cookie(response: Response, ctx: AppContext, request: Request, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=secure_cookies(ctx, request))


@dataclass(frozen=True)
class Revealed:
    """A secret shown once (a new API key, a webhook's signing secret), with what to call it."""

    label: str
    value: str


def reveal_once(response: Response, ctx: AppContext, request: Request, path: str, label: str, value: str) -> None:
    """Carry a secret from the form that made it to the page at ``path`` (after a redirect, so reloading that page
    neither shows it again nor makes another): a cookie sent to that path only, for a short while, which the page
    deletes as it shows the secret."""
    payload = base64.urlsafe_b64encode(json.dumps({"label": label, "value": value}).encode()).decode()
    response.set_cookie(
        REVEAL_COOKIE,
        payload,
        max_age=REVEAL_MAX_AGE_S,
        path=path,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(ctx, request),
    )


def revealed_secret(request: Request) -> Revealed | None:
    """The secret carried to this page (see ``reveal_once``), if any."""
    raw = request.cookies.get(REVEAL_COOKIE)
    if raw is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        return Revealed(label=str(data["label"]), value=str(data["value"]))
    except (ValueError, KeyError, TypeError):
        return None


def forget_revealed(response: Response, ctx: AppContext, request: Request) -> None:
    response.delete_cookie(
        REVEAL_COOKIE, path=request.url.path, httponly=True, samesite="strict", secure=secure_cookies(ctx, request)
    )


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def safe_next(value: str | None, default: str = "/agents") -> str:
    """Where to go after signing in: a path on this site only (never another origin)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def _sign_in_redirect(request: Request) -> RedirectResponse:
    target = "/login"
    if request.method == "GET" and request.url.path not in ("/", "/login"):
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += "?next=" + quote(wanted, safe="")
    return RedirectResponse(target, status_code=303)


def error_page(request: Request, error: ApiError) -> HTMLResponse:
    viewer = getattr(request.state, "viewer", None)
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid input", 429: "Too many requests"}
    return page(
        request,
        "error.html",
        viewer,
        status=error.status,
        headers=error.headers,
        title=titles.get(error.status, "Something went wrong"),
        detail=error.detail or "",
        status_code=error.status,
    )


class ConsoleRoute(APIRoute):
    """A console page: refusals become pages (sign-in redirect, 403, 404, ...) instead of problem+json, and every
    answer carries the console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except (SignInRequired, Unauthenticated):
                response = _sign_in_redirect(request)
            except UseCaseError as e:
                response = error_page(request, refusal(e))
            except ApiError as e:
                response = error_page(request, e)
            except RequestValidationError as e:
                fields = ", ".join(".".join(str(p) for p in err.get("loc", ())) for err in e.errors()[:5])
                response = error_page(request, ApiError(422, f"invalid {fields}" if fields else "invalid request"))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return run
