"""Intent counts per agent (what callers ask most, and how much of it the cache answered)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import AUTHED, Auth, Ctx, QueryTime, errors
from ..models_intents import IntentStats
from ..problems import invalid
from ..rest import IdPath
from ..usecases import intents

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=AUTHED)


@router.get(
    "/{agent_id}/intents/stats",
    response_model=IntentStats,
    responses=errors(404),
    summary="Intent counts of an agent",
    description="How many caller turns of the agent's calls matched each intent (at or above the agent's "
    "`intent_threshold`), how many of those were answered from the intent's fixed answer without an LLM request "
    "(`cached`), and the mean confidence. Optional window on the calls' start: `started_after` (inclusive), "
    "`started_before` (exclusive). Intents still configured but never matched count 0. Supervisors see their own "
    "agents.",
)
async def intent_stats(
    agent_id: IdPath, principal: Auth, ctx: Ctx, started_after: QueryTime = None, started_before: QueryTime = None
) -> IntentStats:
    if started_after is not None and started_before is not None and started_after >= started_before:
        raise invalid("query.started_after", "must be before started_before")
    return await intents.stats(ctx, principal, agent_id, started_after, started_before)
