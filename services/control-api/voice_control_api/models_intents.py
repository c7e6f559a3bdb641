"""API models of agents' intents and their counts (kept apart from ``models``, which other resources edit)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from voice_schemas.agent import Intent

from .openapi_examples import examples


class IntentConfig(Intent):
    """An intent as a request gives it (unknown fields refused). What a shape cannot check (unique names, the tool
    being one of the agent's that runs without arguments) is checked when a version is saved: usecases.intents."""

    model_config = ConfigDict(extra="forbid")


class IntentCount(BaseModel):
    name: str
    turns: int = Field(description="Caller turns that matched it (at or above the agent's threshold)")
    cached: int = Field(description="Of those, answered from its fixed answer without an LLM request")
    avg_confidence: float | None = Field(description="Mean confidence of the matches (null when none)")
    configured: bool = Field(description="The agent's current version still has this intent")


class IntentStats(BaseModel):
    model_config = examples({
        "agent_id": "0f4c6a1e2b3d4c5e8f9a0b1c2d3e4f5a", "started_after": None, "started_before": None,
        "intents": [{"name": "opening_hours", "turns": 42, "cached": 42, "avg_confidence": 0.78, "configured": True},
                    {"name": "booking", "turns": 17, "cached": 0, "avg_confidence": 0.66, "configured": True}],
    })
    agent_id: str
    started_after: datetime | None = Field(description="Calls started at or after this (null: no bound)")
    started_before: datetime | None = Field(description="Calls started before this (null: no bound)")
    intents: list[IntentCount] = Field(description="The agent's intents, most matched first; an intent no call "
                                       "matched yet counts 0")


class TurnIntentOut(BaseModel):
    """The intent a caller turn matched, as brain reported it."""

    name: str
    confidence: float = Field(description="Cosine of the closest example (word overlap without the model)")
    cached: bool = Field(description="Answered with the intent's fixed answer, without an LLM request")
