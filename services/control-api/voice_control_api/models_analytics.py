"""API models of post-call analytics: a tenant's price table, a call's summary / KPIs / cost (in the call detail)
and the daily aggregates per agent. Kept apart from ``models`` so the analytics API grows on its own; ``models``
imports ``CallAnalytics`` for the call detail. Money is ``Decimal`` (a JSON string), never a float."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .openapi_examples import AGENT_ID, TENANT_ID, Example, examples

Price = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6, examples=["0.0085"])]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code", examples=["USD"])]

_PRICES: Example = {
    "currency": "USD",
    "telephony_per_minute": "0.0085",
    "stt_per_minute": "0.006",
    "llm_input_per_1k_tokens": "0.00015",
    "llm_output_per_1k_tokens": "0.0006",
    "tts_per_1k_chars": "0.015",
}


class TenantPricesPut(BaseModel):
    """The whole price table (a field left out is 0). Up to 6 decimal places, at most 8 digits before the point."""

    model_config = ConfigDict(extra="forbid", **examples(_PRICES))
    currency: Currency = "USD"
    telephony_per_minute: Price = Decimal(0)
    stt_per_minute: Price = Decimal(0)
    llm_input_per_1k_tokens: Price = Decimal(0)
    llm_output_per_1k_tokens: Price = Decimal(0)
    tts_per_1k_chars: Price = Decimal(0)
    version: int | None = Field(None, description="The version this change is based on (409 when stale)")


class TenantPrices(BaseModel):
    model_config = examples({**_PRICES, "tenant_id": TENANT_ID, "is_default": False,
                             "updated_at": "2025-01-01T10:00:00Z", "version": 2})
    tenant_id: str
    currency: str
    telephony_per_minute: Decimal
    stt_per_minute: Decimal
    llm_input_per_1k_tokens: Decimal
    llm_output_per_1k_tokens: Decimal
    tts_per_1k_chars: Decimal
    is_default: bool = Field(description="No table is stored: the platform default (all zero, USD) applies")
    updated_at: datetime | None
    version: int = Field(description="0 while the default applies")


class CallCost(BaseModel):
    currency: str
    telephony: Decimal
    stt: Decimal
    llm_input: Decimal
    llm_output: Decimal
    tts: Decimal
    total: Decimal


_ANALYTICS = {
    "summary": "The caller moved their appointment from Friday to Monday at nine.",
    "disposition": "resolved",
    "tags": ["appointment", "reschedule"],
    "source": "llm",
    "fallback_reason": None,
    "kpis": {"handle_time_s": 132.0, "caller_talk_s": 31.5, "agent_talk_s": 48.2, "agent_talk_listen_ratio": 1.53,
             "interruptions": 1.0, "longest_silence_s": 4.2, "agent_latency_p50_ms": 910.0,
             "agent_latency_p95_ms": 1420.0, "csat_estimate": 4.1},
    "usage": {"telephony_s": 132.0, "stt_audio_s": 31.5, "llm_input_tokens": 5400, "llm_output_tokens": 310,
              "llm_tokens_estimated": False, "tts_characters": 1290},
    "cost": {"currency": "USD", "telephony": "0.018700", "stt": "0.003150", "llm_input": "0.000810",
             "llm_output": "0.000186", "tts": "0.019350", "total": "0.042196"},
    "created_at": "2025-01-01T10:02:17Z",
}


class CallAnalytics(BaseModel):
    """A finished call's post-call analysis (analytics writes it a few seconds after the call ends)."""

    model_config = examples(_ANALYTICS)
    summary: str
    disposition: str = Field(description="resolved, unresolved, transferred, callback, abandoned, no_conversation, "
                             "dropped or other")
    tags: list[str]
    source: Literal["llm", "extractive"] = Field(
        description="`llm`: written by the agent's model; `extractive`: the deterministic fallback")
    fallback_reason: str | None = Field(description="Why the extractive summary was used")
    kpis: dict[str, float] = Field(description="Handle time, talk times and ratios, interruptions, longest silence, "
                                   "agent latency p50/p95, CSAT estimate (see the README's Analytics section)")
    usage: dict[str, float | int | bool] = Field(description="What the call consumed, as costed")
    cost: CallCost
    created_at: datetime


class AgentDay(BaseModel):
    agent_id: str
    day: date = Field(description="UTC day the calls started on")
    calls: int
    ended_calls: int
    aht_s: float | None = Field(description="Average handle time of the ended calls (answered -> ended)")
    summarized_calls: int
    cost: dict[str, Decimal] = Field(description="Total estimated cost of the summarised calls, per currency")
    avg_sentiment: float | None = Field(description="Mean over calls of each call's mean caller sentiment (VADER "
                                        "compound, -1..1)")
    avg_csat: float | None = Field(description="Mean CSAT estimate (1-5) of the summarised calls")
    fcr: float | None = Field(description="First-call resolution: the share of the day's callers (by number) who "
                              "did not call the agent again within `fcr_window_hours` of their first call that day")
    fcr_callers: int = Field(description="Callers with a number that day (the FCR's denominator)")


class DailyReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [{
        "from": "2025-01-01", "to": "2025-01-07", "fcr_window_hours": 72,
        "items": [{"agent_id": AGENT_ID, "day": "2025-01-01", "calls": 42, "ended_calls": 41, "aht_s": 128.4,
                   "summarized_calls": 41, "cost": {"USD": "1.730000"}, "avg_sentiment": 0.18, "avg_csat": 3.6,
                   "fcr": 0.86, "fcr_callers": 37}],
    }]})
    from_: date = Field(alias="from")
    to: date
    fcr_window_hours: int
    items: list[AgentDay]
