"""Calls in the console: the list (filters by agent, status, channel and day) and a call's page with both speakers'
transcript, interruptions, end reason and each turn's latency per stage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from voice_schemas.events import Channel

from ..models import CallStatus, Turn
from ..rest import IdPath
from ..usecases import agents, calls
from ..usecases.common import Pagination
from ..usecases.errors import NotFound
from .web import ConsoleRoute, Ctx, Signed, agent_names, page

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
PAGE = 50

# The stages of a turn in the order they happen (LatencyBreakdown): each starts where the one before ended, except
# the first token, which is the start of the first sentence's wait. Voice-to-voice is the whole.
SEQUENCE = ("end_of_turn_ms", "stt_ms", "llm_first_sentence_ms", "tts_first_audio_ms", "bus_and_playout_ms")
LABELS = {
    "end_of_turn_ms": "end of turn",
    "stt_ms": "speech to text",
    "llm_first_token_ms": "LLM first token",
    "llm_first_sentence_ms": "LLM first sentence",
    "tts_first_audio_ms": "text to speech",
    "bus_and_playout_ms": "bus and playout",
    "voice_to_voice_ms": "voice to voice",
}


@dataclass(frozen=True)
class Bar:
    """One stage of a turn as a bar: where it starts and how long it is, in percent of the turn's scale."""

    stage: str
    label: str
    ms: float
    start_pct: float
    width_pct: float
    total: bool = False


def latency_bars(latency: dict[str, float] | None) -> list[Bar]:
    """The turn's stages laid out on one time axis (0 = end of the caller's speech), scaled to the longest of the
    voice-to-voice time and the stages' end."""
    if not latency:
        return []
    starts: dict[str, float] = {}
    at = 0.0
    for stage in SEQUENCE:
        if stage in latency:
            starts[stage] = at
            at += max(0.0, latency[stage])
    if "llm_first_token_ms" in latency:
        starts["llm_first_token_ms"] = starts.get("llm_first_sentence_ms", at)
    total = latency.get("voice_to_voice_ms")
    ends = [starts[s] + max(0.0, latency[s]) for s in starts]
    scale = max([total or 0.0, *ends, 1.0])
    order = [s for s in (*SEQUENCE[:2], "llm_first_token_ms", *SEQUENCE[2:]) if s in starts]
    bars = [
        Bar(
            stage=s,
            label=LABELS[s],
            ms=latency[s],
            start_pct=round(100 * starts[s] / scale, 2),
            width_pct=round(max(0.4, 100 * max(0.0, latency[s]) / scale), 2),
        )
        for s in order
    ]
    if total is not None:
        bars.append(
            Bar("voice_to_voice_ms", LABELS["voice_to_voice_ms"], total, 0.0, round(100 * total / scale, 2), True)
        )
    bars += [
        Bar(stage=k, label=k.removesuffix("_ms").replace("_", " "), ms=v, start_pct=0.0, width_pct=0.0)
        for k, v in latency.items()
        if k not in LABELS
    ]
    return bars


def _day(value: str | None) -> datetime | None:
    """A day (YYYY-MM-DD, as a date input sends it) as its first instant in UTC; anything else is no filter."""
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC) if value else None
    except ValueError:
        return None


@router.get("/calls")
async def list_calls(
    request: Request,
    ctx: Ctx,
    viewer: Signed,
    agent_id: str | None = Query(None, max_length=64),
    status: str | None = Query(None, max_length=32),
    channel: str | None = Query(None, max_length=32),
    date_from: str | None = Query(None, max_length=10),
    date_to: str | None = Query(None, max_length=10),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> Response:
    statuses = [s.value for s in CallStatus]
    channels = [c.value for c in Channel]
    until = _day(date_to)
    listing = await calls.list_calls(
        ctx,
        viewer.principal,
        Pagination(limit=PAGE, offset=offset),
        status=status if status in statuses else None,
        agent_id=agent_id or None,
        number=None,
        channel=channel if channel in channels else None,
        started_after=_day(date_from),
        started_before=until + timedelta(days=1) if until else None,
    )
    filters = {
        "agent_id": agent_id or "",
        "status": status or "",
        "channel": channel or "",
        "date_from": date_from or "",
        "date_to": date_to or "",
    }
    query = urlencode({k: v for k, v in filters.items() if v})
    return page(
        request,
        "calls/list.html",
        viewer,
        listing=listing,
        agent_names=await agent_names(ctx, viewer),
        statuses=statuses,
        channels=channels,
        f=filters,
        base="/calls" + (f"?{query}" if query else ""),
    )


@router.get("/calls/{call_id}")
async def show_call(call_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    call = await calls.get_call(ctx, viewer.principal, call_id)
    try:
        agent_name = (await agents.get_agent(ctx, viewer.principal, call.agent_id)).name
    except NotFound:
        agent_name = None  # deleted since: its calls stay
    turns: list[tuple[Turn, list[Bar]]] = [(t, latency_bars(t.latency)) for t in call.turns]
    interruptions = sum(1 for t in call.turns if t.interrupted)
    return page(
        request,
        "calls/detail.html",
        viewer,
        call=call,
        agent_name=agent_name,
        turns=turns,
        interruptions=interruptions,
        live=call.status != "ended",
    )
