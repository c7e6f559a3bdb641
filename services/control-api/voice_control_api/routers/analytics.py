"""Post-call analytics: a tenant's price table, the daily aggregates per agent and an agent's intent counts."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response

from ..deps import AUTHED, Auth, Ctx, QueryText, errors
from ..models_analytics import DailyReport, TenantPrices, TenantPricesPut
from ..models_intents import IntentStats
from ..problems import invalid
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..usecases import analytics, intents

router = APIRouter(tags=["analytics"], responses=AUTHED)

EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)
QueryDay = Annotated[date | None, Query(description="UTC day (YYYY-MM-DD), inclusive")]
FcrWindow = Annotated[
    int, Query(ge=1, le=720, description="A caller who calls the agent again within this many hours of their first "
               "call of the day was not resolved on the first call")
]
DAILY_DESCRIPTION = (
    "Per agent and UTC day (of the calls' start), from `from` to `to` inclusive (default: the last 30 days, at most "
    "366): `calls`, `ended_calls`, `aht_s` (average handle time, answered -> ended), `cost` (the summarised calls' "
    "estimated cost per currency), `avg_sentiment` (mean of each call's mean caller sentiment), `avg_csat`, and "
    "`fcr`: the share of the day's callers (by number; calls without one are left out) who did not call the same "
    "agent again within `fcr_window_hours` of their first call that day. Supervisors see their own agents."
)


def _range(start: date | None, end: date | None) -> tuple[date, date]:
    defaulted = start is None
    start, end = analytics.day_range(start, end)
    if defaulted:  # the default window of a `to` near the earliest day starts there, not before it
        start = max(start, EARLIEST)
    for name, day in (("from", start), ("to", end)):
        if not EARLIEST <= day <= LATEST:
            raise invalid(f"query.{name}", f"must be between {EARLIEST} and {LATEST}")
    if start > end:
        raise invalid("query.from", "must not be after `to`")
    if (end - start).days + 1 > analytics.MAX_DAYS:
        raise invalid("query.from", f"the range spans at most {analytics.MAX_DAYS} days")
    return start, end


@router.get(
    "/v1/analytics/daily",
    response_model=DailyReport,
    summary="Daily aggregates per agent",
    description=DAILY_DESCRIPTION + " Filter with `agent_id`.",
)
async def daily(
    principal: Auth,
    ctx: Ctx,
    agent_id: QueryText = None,
    from_: Annotated[date | None, Query(alias="from", description="First UTC day (YYYY-MM-DD)")] = None,
    to: QueryDay = None,
    fcr_window_hours: FcrWindow = 72,
) -> DailyReport:
    start, end = _range(from_, to)
    return await analytics.daily(ctx, principal, agent_id=agent_id, start=start, end=end,
                                 fcr_window_hours=fcr_window_hours)


@router.get(
    "/v1/analytics/agents/{agent_id}/daily",
    response_model=DailyReport,
    responses=errors(404),
    summary="Daily aggregates of one agent",
    description=DAILY_DESCRIPTION + " 404 when the agent is not yours to see.",
)
async def agent_daily(
    agent_id: IdPath,
    principal: Auth,
    ctx: Ctx,
    from_: Annotated[date | None, Query(alias="from", description="First UTC day (YYYY-MM-DD)")] = None,
    to: QueryDay = None,
    fcr_window_hours: FcrWindow = 72,
) -> DailyReport:
    start, end = _range(from_, to)
    return await analytics.daily(ctx, principal, agent_id=agent_id, start=start, end=end,
                                 fcr_window_hours=fcr_window_hours, require_agent=True)


@router.get(
    "/v1/analytics/agents/{agent_id}/intents",
    response_model=IntentStats,
    responses=errors(404),
    summary="Intent counts of one agent over UTC days",
    description="The agent's intent counts (as `GET /v1/agents/{agent_id}/intents/stats`) for the calls that started "
    "from `from` to `to` inclusive (UTC days; default: the last 30 days, at most 366): caller turns per intent, how "
    "many the cache answered without an LLM request, mean confidence; configured intents never matched count 0. "
    "404 when the agent is not yours to see.",
)
async def agent_intents(
    agent_id: IdPath,
    principal: Auth,
    ctx: Ctx,
    from_: Annotated[date | None, Query(alias="from", description="First UTC day (YYYY-MM-DD)")] = None,
    to: QueryDay = None,
) -> IntentStats:
    start, end = _range(from_, to)
    after = datetime.combine(start, time.min, tzinfo=UTC)
    before = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    return await intents.stats(ctx, principal, agent_id, after, before)


@router.get(
    "/v1/tenants/{tenant_id}/prices",
    response_model=TenantPrices,
    responses=errors(404),
    summary="Get a tenant's price table",
    description="What each call of the tenant is costed with (telephony and STT per minute, LLM per 1k input and "
    "output tokens, TTS per 1k characters). Without a stored table the platform default applies: all zero, USD "
    "(`is_default`). The tenant's admins, or a platform admin.",
)
async def get_prices(tenant_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> TenantPrices:
    prices = await analytics.get_prices(ctx, principal, tenant_id)
    set_etag(response, prices.version)
    return prices


@router.put(
    "/v1/tenants/{tenant_id}/prices",
    response_model=TenantPrices,
    responses=errors(404, 409, 412),
    summary="Replace a tenant's price table",
    description="Calls are costed with the table in force when analytics summarises them (a few seconds after they "
    "end); earlier calls keep their cost. Audited. The tenant's admins, or a platform admin.",
)
async def put_prices(
    tenant_id: IdPath,
    body: TenantPricesPut,
    principal: Auth,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> TenantPrices:
    prices = await analytics.put_prices(ctx, principal, tenant_id, body, expected_version(if_match, body.version))
    set_etag(response, prices.version)
    return prices
