"""Request ids and one access-log line per request (pure ASGI, so nothing runs in a separate task)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from voice_runtime.logging import get_logger

from .context import request_id_var
from .problems import problem_response

log = get_logger("voice_control_api.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_QUIET = ("/healthz", "/readyz", "/metrics")
MAX_BODY_BYTES = 1024 * 1024  # an agent with the longest prompt is ~100 KiB

# labelled by route template (never by ids) and status
REQUESTS = Counter(
    "voice_control_api_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "voice_control_api_request_seconds",
    "HTTP request duration by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class BodyTooLarge(StarletteHTTPException):
    """The request body grew past its limit (MAX_BODY_BYTES, or a large-body route's) while it was read (an
    HTTPException, so the problem handlers answer it wherever the read happens)."""

    def __init__(self, limit: int = MAX_BODY_BYTES) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class RequestContextMiddleware:
    """Takes X-Request-Id from the caller (when sane) or makes one, returns it, binds it to every log line
    of the request, refuses bodies over MAX_BODY_BYTES (413), and answers an unhandled error with a
    problem+json 500 carrying the id.

    The body limit counts the bytes actually received: a chunked body has no Content-Length, and a
    Content-Length is only the client's claim. A declared length over the limit is refused before reading.
    """

    def __init__(self, app: ASGIApp, large_bodies: tuple[tuple[str, int], ...] = ()) -> None:
        self.app = app
        # (path regex, byte limit): routes that take more than MAX_BODY_BYTES (knowledge document uploads)
        self.large_bodies = tuple((re.compile(pattern), limit) for pattern, limit in large_bodies)

    def _limit(self, path: str) -> int:
        return next((limit for pattern, limit in self.large_bodies if pattern.match(path)), MAX_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "sent": False}

        received = 0
        limit = self._limit(scope.get("path", ""))

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                if _too_large(headers, limit):
                    raise BodyTooLarge(limit)
                await self.app(scope, receive_limited, send_with_id)
            except BodyTooLarge as exc:
                if status["sent"]:
                    raise
                response = problem_response(Request(scope), exc.status_code, exc.detail)
                await response(scope, receive, send_with_id)
            except Exception as exc:
                log.error("unhandled_error", path=scope.get("path"), error=repr(exc)[:500], exc_info=exc)
                if status["sent"]:
                    raise
                response = problem_response(
                    Request(scope), 500, "internal error; quote the request id when reporting it"
                )
                await response(scope, receive, send_with_id)
            finally:
                request_id_var.reset(token)
                elapsed = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                REQUESTS.labels(scope.get("method", ""), route, str(status["code"])).inc()
                REQUEST_SECONDS.labels(scope.get("method", ""), route).observe(elapsed)
                path = scope.get("path", "")
                if path not in _QUIET:
                    principal = scope.get("state", {}).get("principal")
                    log.info(
                        "request",
                        method=scope.get("method"),
                        path=path,
                        status=status["code"],
                        duration_ms=round(elapsed * 1000, 1),
                        tenant_id=getattr(principal, "tenant_id", None),
                        actor=getattr(principal, "actor", None),
                    )


def _too_large(headers: dict[bytes, bytes], limit: int) -> bool:
    length = headers.get(b"content-length")
    if length is None:
        return False
    try:
        return int(length) > limit
    except ValueError:
        return False
