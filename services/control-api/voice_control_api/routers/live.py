"""Live supervision: server-sent event feeds of live calls (per call, per tenant) and whispers to the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, Field
from starlette.background import BackgroundTask

from ..context import AppContext
from ..deps import AUTHED, Auth, Ctx, errors
from ..feeds import FeedLimitReached
from ..fields import clean_text
from ..principal import Principal
from ..problems import ApiError, invalid
from ..rest import IdPath
from ..usecases import live_feed, whisper

router = APIRouter(tags=["live"], responses=AUTHED)

_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "Server-sent events: `id` is the event's CALLS stream "
        "sequence (send it back as `Last-Event-ID` to resume), `event` its type, `data` its envelope (JSON)",
    },
    **errors(503),
}
_FEED_DOC = (
    " Resumable: reconnect with `Last-Event-ID` (the last `id` received) and the feed continues from the durable "
    "stream, missing nothing and repeating nothing. An idle feed sends a comment line every `LIVE_FEED_HEARTBEAT_S`. "
    "A client that does not read fast enough gets an `error` event and is disconnected (reconnect with "
    "`Last-Event-ID`). 429 when the tenant or the credential has too many feeds open."
)
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)]


async def _stream(ctx: AppContext, principal: Principal, feed: Any) -> StreamingResponse:
    s = ctx.settings
    try:
        release = ctx.feeds.acquire(
            principal.tenant_id,
            principal.actor,
            max_tenant=s.live_feed_max_per_tenant,
            max_actor=s.live_feed_max_per_credential,
        )
    except FeedLimitReached as e:
        raise ApiError(
            429, f"too many live feeds open for this {e.what}", kind="rate-limited", headers={"Retry-After": "5"}
        ) from None

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": live feed\n\n"
            async for item in feed.events():
                yield live_feed.sse(item)
        finally:
            release()

    # the background task frees the slot too when the response ends before its body was ever read
    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        background=BackgroundTask(release),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _after(last_event_id: str | None) -> int | None:
    try:
        return live_feed.parse_last_event_id(last_event_id)
    except ValueError as e:
        raise invalid("Last-Event-ID", str(e)) from None


@router.get(
    "/v1/calls/{call_id}/events",
    response_class=StreamingResponse,
    responses={**_SSE, **errors(404)},
    summary="Live feed of one call (server-sent events)",
    description="The call's events from its start: `call.started`, `call.answered`, `call.ended`, "
    "`transcript.partial` and `transcript.final` (the caller), `turn.completed` (the agent's words as heard), "
    "`analytics.sentiment`, `sentiment.alert`, `analytics.summary`, `tool.*` (requests, results, approvals) and "
    "`supervisor.whisper`. Supervisors: the calls of their own agents." + _FEED_DOC,
)
async def call_events(
    call_id: IdPath, request: Request, principal: Auth, ctx: Ctx, last_event_id: LastEventId = None
) -> StreamingResponse:
    feed = await live_feed.call_feed(ctx, principal, call_id, _after(last_event_id))
    return await _stream(ctx, principal, feed)


@router.get(
    "/v1/live/events",
    response_class=StreamingResponse,
    responses=_SSE,
    summary="Live feed of the tenant's calls (server-sent events)",
    description="The events of every live call of your tenant (supervisors: of their own agents' calls), as in "
    "the per-call feed, from now on; with `Last-Event-ID`, from after that event." + _FEED_DOC,
)
async def tenant_events(
    request: Request, principal: Auth, ctx: Ctx, last_event_id: LastEventId = None
) -> StreamingResponse:
    feed = await live_feed.tenant_feed(ctx, principal, _after(last_event_id))
    return await _stream(ctx, principal, feed)


class WhisperIn(BaseModel):
    text: Annotated[str, AfterValidator(clean_text)] = Field(
        min_length=1, max_length=1000, description="The instruction (at most `WHISPER_MAX_CHARS`)"
    )


class WhisperSent(BaseModel):
    call_id: str
    event_id: str = Field(description="The `supervisor.whisper` event's id (also in the live feed)")


@router.post(
    "/v1/calls/{call_id}/whisper",
    status_code=202,
    response_model=WhisperSent,
    responses=errors(404, 409, 503),
    summary="Whisper an instruction to the agent of a live call",
    description="The agent follows the instruction from its next reply on; the caller never hears it. It stays in "
    "the call's history as a supervisor note (brain keeps the newest 8, each cut at 1,000 characters) and is "
    "audited (`call.whisper`, without its text). Admins, or the supervisor who owns the call's agent. 409 when "
    "the call is not live.",
)
async def whisper_call(call_id: IdPath, body: WhisperIn, principal: Auth, ctx: Ctx) -> WhisperSent:
    text = body.text
    if not text.strip():
        raise invalid("text", "must not be blank")
    if len(text) > ctx.settings.whisper_max_chars:
        raise invalid("text", f"at most {ctx.settings.whisper_max_chars} characters")
    event_id = await whisper.whisper(ctx, principal, call_id, text)
    return WhisperSent(call_id=call_id, event_id=event_id)
