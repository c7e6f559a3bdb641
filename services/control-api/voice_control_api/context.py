"""What a request handler needs from the running service, and the per-request id."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from fastapi import Request

from .kvsync import ConfigPublisher
from .problems import ApiError
from .ratelimit import RateLimiter
from .security import AccessTokens, Passwords
from .settings import ControlApiSettings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@dataclass
class AppContext:
    settings: ControlApiSettings
    pool: asyncpg.Pool
    publisher: ConfigPublisher
    tokens: AccessTokens
    passwords: Passwords
    limiter: RateLimiter
    request_resync: Callable[[], None]


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext | None = getattr(request.app.state, "ctx", None)
    if ctx is None:
        raise ApiError(503, "service is starting", headers={"Retry-After": "1"})
    return ctx
