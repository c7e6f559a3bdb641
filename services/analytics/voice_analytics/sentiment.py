"""Live sentiment of the caller: every final caller utterance (``transcript.final``) scored with VADER, a lexicon
model made for short conversational text (offline, no model download).

- score: VADER's ``compound`` in [-1, 1]; label: positive when >= 0.05, negative when <= -0.05, else neutral
  (VADER's own cut-offs);
- rolling: the call's exponential moving average of the caller's scores, ``r_n = ALPHA * s_n + (1 - ALPHA) *
  r_(n-1)``, ``r_1 = s_1`` (ALPHA = 0.5: the last utterance weighs half, the one before a quarter, ...);
- alert: ``sentiment.alert`` when the rolling value falls to or below the agent's ``sentiment_alert_threshold``
  (default -0.5) from above it (a call starts above it): once per crossing, not on every angry utterance.

Each score is stored (``call_sentiment``, one row per transcript event) in a transaction under a per-call advisory
lock, so the rolling value follows the stored order even with several replicas; a redelivered event finds its row
and re-publishes the same events (their ids derive from the transcript event's, so JetStream and every consumer
drop the copies).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
from voice_runtime.bus import Transient
from voice_schemas import AgentConfig, Envelope, events, make

ALPHA = 0.5
POSITIVE, NEGATIVE = 0.05, -0.05
DEFAULT_THRESHOLD: float = AgentConfig.model_fields["sentiment_alert_threshold"].default
Label = Literal["positive", "neutral", "negative"]


class Scorer:
    def __init__(self) -> None:
        self._vader = SentimentIntensityAnalyzer()  # loads its lexicon from the package, once

    def compound(self, text: str) -> float:
        return max(-1.0, min(1.0, float(self._vader.polarity_scores(text)["compound"])))


def label_of(compound: float) -> Label:
    return "positive" if compound >= POSITIVE else "negative" if compound <= NEGATIVE else "neutral"


def rolling_of(previous: float | None, compound: float) -> float:
    return compound if previous is None else ALPHA * compound + (1.0 - ALPHA) * previous


def crossed(previous: float | None, rolling: float, threshold: float) -> bool:
    return rolling <= threshold and (previous is None or previous > threshold)


@dataclass(frozen=True)
class Scored:
    compound: float
    label: Label
    rolling: float
    alert: bool
    threshold: float


async def agent_of(conn: asyncpg.Connection, call_id: str) -> tuple[str, int]:
    row = await conn.fetchrow("SELECT agent_id, agent_version FROM calls WHERE id = $1", call_id)
    if row is None:
        raise Transient("call row not written yet")
    return row["agent_id"], row["agent_version"]


async def record(
    pool: asyncpg.Pool, env: Envelope[events.TranscriptFinalized], compound: float, threshold: float
) -> Scored:
    """Store the score of ``env`` (once) and return it with the call's rolling value and whether it alerts."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", env.call_id)
            row = await conn.fetchrow(
                "SELECT compound, label, rolling, alert, threshold FROM call_sentiment WHERE event_id = $1", env.id
            )
            if row is not None:
                return Scored(**dict(row))
            previous = await conn.fetchval(
                "SELECT rolling FROM call_sentiment WHERE call_id = $1 AND speaker = 'caller' ORDER BY id DESC LIMIT 1",
                env.call_id,
            )
            rolling = round(rolling_of(previous, compound), 4)
            scored = Scored(compound, label_of(compound), rolling, crossed(previous, rolling, threshold), threshold)
            await conn.execute(
                "INSERT INTO call_sentiment (call_id, tenant_id, event_id, turn_id, utterance_id, speaker,"
                " compound, label, rolling, alert, threshold, at)"
                " VALUES ($1, $2, $3, $4, $5, 'caller', $6, $7, $8, $9, $10, $11)",
                env.call_id,
                env.tenant_id,
                env.id,
                env.turn_id,
                env.data.utterance_id,
                scored.compound,
                scored.label,
                scored.rolling,
                scored.alert,
                threshold,
                env.occurred_at,
            )
            return scored
    except asyncpg.ForeignKeyViolationError as e:
        raise Transient("call row not written yet") from e
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:
        raise Transient(f"database unavailable: {e}") from e


def derived_id(event_id: str, what: str) -> str:
    return hashlib.sha256(f"{event_id}:{what}".encode()).hexdigest()[:32]


def events_of(env: Envelope[events.TranscriptFinalized], s: Scored) -> list[Envelope[Any]]:
    """What to publish for a scored utterance: ``analytics.sentiment``, and ``sentiment.alert`` when it alerts."""
    common: dict[str, Any] = {"tenant_id": env.tenant_id, "call_id": env.call_id, "turn_id": env.turn_id}
    out: list[Envelope[Any]] = [
        make(
            events.SentimentScored(
                speaker="caller",
                utterance_id=env.data.utterance_id,
                compound=s.compound,
                label=s.label,
                rolling=s.rolling,
            ),
            event_id=derived_id(env.id, "sentiment"),
            **common,
        )
    ]
    if s.alert:
        out.append(
            make(
                events.SentimentAlert(utterance_id=env.data.utterance_id, rolling=s.rolling, threshold=s.threshold),
                event_id=derived_id(env.id, "sentiment_alert"),
                **common,
            )
        )
    return out
