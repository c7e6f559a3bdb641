"""The control-api HTTP application: routers, problem+json everywhere, CORS, request ids, OpenAPI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from voice_runtime.logging import get_logger
from voice_runtime.service import Service, health_routes

from . import console
from .context import AppContext
from .middleware import RequestContextMiddleware
from .problems import PROBLEM_JSON, FieldError, Problem, install_problem_handlers, problem_response
from .routers import (
    agents,
    analytics,
    api_keys,
    audit_log,
    auth,
    call_control,
    calls,
    chats,
    intents,
    knowledge,
    live,
    outbound_calls,
    phone_numbers,
    sip_trunks,
    tenant_secrets,
    tenants,
    tool_calls,
    users,
    web_calls,
    webhooks,
)
from .settings import ControlApiSettings

log = get_logger(__name__)

DESCRIPTION = """
Tenants, users and roles, API keys, versioned agents, phone numbers, calls and transcripts, webhooks,
tenant secrets and the audit log of the voice platform.

**Authentication**: `Authorization: Bearer <key>` with an API key (`vk_...`), or with an access token
from `POST /v1/auth/login` (console users).

**Roles**: `admin` manages everything in its tenant; `supervisor` sees and edits only its own agents
and their calls. A platform-admin key can also create tenants.

**Errors** are RFC 9457 `application/problem+json`. Another tenant's resources are always a plain 404.

**Concurrency**: reads return an `ETag` (the resource version); send it back in `If-Match` (412 when stale)
or put `version` in the body (409 when stale).

**Rate limit**: per credential and per replica; 429 with `Retry-After` when exceeded.
"""

TAGS = [
    {"name": "auth", "description": "Console login (JWT access + rotating refresh tokens), whoami, password"},
    {"name": "tenants", "description": "Tenants (platform admin creates them)"},
    {"name": "users", "description": "Console users of a tenant and their roles (admin)"},
    {"name": "api-keys", "description": "API keys: hashed, shown once, revocable (admin)"},
    {"name": "agents", "description": "Agents with immutable versions; mirrored to JetStream KV for the data plane"},
    {"name": "phone-numbers", "description": "E.164 numbers routed to agents; mirrored to JetStream KV"},
    {"name": "sip-trunks", "description": "SIP trunks per tenant (PBX or carrier): inbound sources and digest "
     "credentials, number rules, outbound proxy (admin); mirrored to JetStream KV"},
    {"name": "calls", "description": "Calls and transcripts (read-only)"},
    {"name": "chats", "description": "Text chats with an agent (no audio), stored as calls of channel `chat`"},
    {"name": "web-calls", "description": "Browser calls (WebRTC) with an agent, stored as calls of channel `webrtc`"},
    {"name": "webhooks", "description": "Webhook endpoints (admin)"},
    {"name": "secrets", "description": "Tenant secrets, e.g. an agent's LLM API key: write-only, sealed (admin)"},
    {"name": "audit-log", "description": "Who changed what, when (admin)"},
    {"name": "live", "description": "Live calls: server-sent event feeds (per call, per tenant) and whispers"},
    {"name": "knowledge", "description": "Knowledge bases and their documents (text, Markdown, HTML, PDF), "
     "retrieved into the turns of the agents that name them"},
    {"name": "analytics", "description": "Daily aggregates per agent (AHT, volume, cost, sentiment, FCR) and "
     "tenants' price tables"},
]

ROUTERS = (auth, tenants, users, api_keys, agents, phone_numbers, calls, chats, webhooks, tenant_secrets, audit_log,
           web_calls, live, call_control, analytics, tool_calls, knowledge, intents, sip_trunks, outbound_calls)


def create_app(
    settings: ControlApiSettings,
    *,
    running: Callable[[], AbstractAsyncContextManager[AppContext]],
    health: Service,
) -> FastAPI:
    """The HTTP app. ``running`` starts the service and yields the context requests are served with, for the
    app's lifespan; ``health`` answers /healthz, /readyz and /metrics."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running() as ctx:
            app.state.ctx = ctx
            try:
                yield
            finally:
                app.state.ctx = None

    app = FastAPI(
        title="Voice platform control API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.ctx = None
    install_problem_handlers(app)

    @app.exception_handler(asyncpg.DataError)
    async def _data_error(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # a value PostgreSQL cannot take (out-of-range number or time) is the client's input, not a crash
        log.warning("database_rejected_value", error=type(exc).__name__)
        return problem_response(request, 422, "a value is out of the range the database accepts", kind="validation")

    health_routes(app, health)
    for module in ROUTERS:
        app.include_router(module.router)
    console.install(app)

    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials="*" not in origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-Id"],
            expose_headers=["ETag", "Location", "Retry-After", "X-Request-Id"],
            max_age=600,
        )
    app.add_middleware(
        RequestContextMiddleware, large_bodies=((knowledge.UPLOAD_PATH, settings.knowledge_max_upload_bytes + 65536),)
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error response declared as application/problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components["Problem"].pop("$defs", None)
    components["FieldError"] = FieldError.model_json_schema(ref_template="#/components/schemas/{model}")
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if "requestBody" in operation:
                operation["responses"].setdefault("400", {"description": "The body could not be read (not JSON)"})
                operation["responses"].setdefault("413", {"description": "The body is over 1 MiB"})
            for code, response in operation["responses"].items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = problem
                    if int(code) == 429:
                        response["headers"] = {
                            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
                        }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
