"""Per-call KPIs from the stored call and its turns (pure: no I/O).

- ``handle_time_s``: answered -> ended (started -> ended when the call was never answered);
- ``caller_talk_s`` / ``agent_talk_s``: the sum of each speaker's speech intervals (a turn's ``started_at`` ->
  ``ended_at``; a turn missing either time adds nothing); ``agent_talk_listen_ratio`` = agent / caller talk time
  and ``caller_talk_listen_ratio`` = caller / agent (absent when the divisor is 0);
- ``interruptions``: agent turns the caller barged into;
- ``longest_silence_s``: the largest gap between consecutive speech intervals of either speaker (the intervals of
  both speakers merged first, so overlapping speech is no silence; before the first and after the last speech is
  not counted);
- ``agent_latency_p50_ms`` / ``agent_latency_p95_ms``: nearest-rank percentiles of the agent turns'
  voice-to-voice milliseconds (end of caller speech -> first agent audio);
- ``csat_estimate``: ``csat.estimate`` of the caller's rolling sentiment.

A KPI that cannot be computed (no turns with times, no latency) is left out of ``as_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

from . import csat

Speaker = Literal["caller", "agent"]


@dataclass(frozen=True)
class TurnTimes:
    speaker: Speaker
    started_at: datetime | None
    ended_at: datetime | None
    interrupted: bool = False
    voice_to_voice_ms: float | None = None

    @property
    def seconds(self) -> float:
        if self.started_at is None or self.ended_at is None:
            return 0.0
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


@dataclass(frozen=True)
class Kpis:
    handle_time_s: float | None
    caller_talk_s: float
    agent_talk_s: float
    agent_talk_listen_ratio: float | None
    caller_talk_listen_ratio: float | None
    caller_turns: int
    agent_turns: int
    interruptions: int
    longest_silence_s: float | None
    agent_latency_p50_ms: float | None
    agent_latency_p95_ms: float | None
    csat_estimate: float | None

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def handle_time_s(started_at: datetime, answered_at: datetime | None, ended_at: datetime | None) -> float | None:
    if ended_at is None:
        return None
    return round(max(0.0, (ended_at - (answered_at or started_at)).total_seconds()), 3)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least ``p`` percent of the values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def longest_silence_s(turns: Sequence[TurnTimes]) -> float | None:
    spans = sorted(
        (t.started_at, t.ended_at)
        for t in turns
        if t.started_at is not None and t.ended_at is not None and t.ended_at >= t.started_at
    )
    if len(spans) < 2:
        return None
    longest = 0.0
    _, end = spans[0]
    for start, stop in spans[1:]:
        if start > end:
            longest = max(longest, (start - end).total_seconds())
        end = max(end, stop)
    return round(longest, 3)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def compute(
    started_at: datetime,
    answered_at: datetime | None,
    ended_at: datetime | None,
    turns: Sequence[TurnTimes],
    caller_rolling: Sequence[float],
) -> Kpis:
    caller = [t for t in turns if t.speaker == "caller"]
    agent = [t for t in turns if t.speaker == "agent"]
    caller_s = round(sum(t.seconds for t in caller), 3)
    agent_s = round(sum(t.seconds for t in agent), 3)
    latencies = [t.voice_to_voice_ms for t in agent if t.voice_to_voice_ms is not None]
    return Kpis(
        handle_time_s=handle_time_s(started_at, answered_at, ended_at),
        caller_talk_s=caller_s,
        agent_talk_s=agent_s,
        agent_talk_listen_ratio=_ratio(agent_s, caller_s),
        caller_talk_listen_ratio=_ratio(caller_s, agent_s),
        caller_turns=len(caller),
        agent_turns=len(agent),
        interruptions=sum(1 for t in agent if t.interrupted),
        longest_silence_s=longest_silence_s(turns),
        agent_latency_p50_ms=percentile(latencies, 50),
        agent_latency_p95_ms=percentile(latencies, 95),
        csat_estimate=csat.estimate(caller_rolling),
    )
