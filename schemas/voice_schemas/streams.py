"""JetStream streams, KV buckets and durable consumers: defined here, once.

The runtime provisions these idempotently; services refer to them by the constants below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import events as ev
from .envelope import Payload

Storage = Literal["file", "memory"]


@dataclass(frozen=True)
class StreamDef:
    name: str
    subjects: tuple[str, ...]
    description: str
    storage: Storage = "file"
    retention: Literal["limits", "workqueue", "interest"] = "limits"
    duplicate_window_s: float = 120.0
    max_age_s: float = 7 * 24 * 3600
    max_bytes: int = -1
    max_msg_size: int = 1024 * 1024
    discard: Literal["old", "new"] = "old"
    replicas: int = 1


@dataclass(frozen=True)
class KvDef:
    bucket: str
    description: str
    history: int = 1
    ttl_s: float = 0.0  # 0 = keep
    storage: Storage = "file"
    max_value_size: int = 256 * 1024


@dataclass(frozen=True)
class ConsumerDef:
    """A durable pull consumer; replicas of a service share it, so each message goes to one."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    # delay before each redelivery after a transient failure (nak with delay)
    backoff_s: tuple[float, ...] = (0.2, 1.0, 5.0, 15.0)
    max_ack_pending: int = 1000
    deliver_policy: Literal["all", "new"] = "new"
    description: str = ""
    concurrency: int = field(default=8)


# ------------------------------------------------------------------ streams
CALLS = StreamDef(
    name="CALLS",
    subjects=tuple(
        sorted({c.subject_pattern() for c in ev.ALL_EVENTS if c.TRANSPORT == "durable"})
    ),
    description="Durable per-call facts and commands (JSON envelopes), replayable per call.",
    max_age_s=7 * 24 * 3600,
    max_bytes=8 * 1024**3,
)

AUDIO = StreamDef(
    name="AUDIO",
    subjects=("call.*.audio.in", "call.*.audio.out", "call.*.audio.played"),
    description="Raw 20 ms PCM16 frames: caller audio (in), synthesized agent audio (out) and the agent audio "
    "actually played to the caller (played), kept briefly for crash resume, replay and live recording.",
    duplicate_window_s=10.0,
    max_age_s=3600,
    max_bytes=4 * 1024**3,
    max_msg_size=64 * 1024,
)

DEAD_LETTERS = StreamDef(
    name="DEADLETTER",
    subjects=("dlq.>",),
    description="Poison messages and messages that exhausted redelivery, with the failure in headers.",
    max_age_s=30 * 24 * 3600,
)

STREAMS: tuple[StreamDef, ...] = (CALLS, AUDIO, DEAD_LETTERS)

# ------------------------------------------------------------------ KV buckets
KV_AGENTS = KvDef("agents", "Agent configs: a.<agent_id> = current version, a.<agent_id>.v<n> = that version")
KV_NUMBERS = KvDef("numbers", "Phone number routing: n<digits> -> {tenant_id, agent_id}")
KV_CALLS = KvDef("calls", "Live call records by call id", ttl_s=24 * 3600)
KV_HISTORY = KvDef(
    "history", "Conversation history per call (any brain replica takes the next turn)", ttl_s=24 * 3600,
    history=1, max_value_size=1024 * 1024,
)
KV_SECRETS = KvDef(
    "secrets", "Tenant secrets, sealed (AES-GCM under SECRETS_KEY, which only the services using them hold): "
    "s.<tenant_id>.<name>", max_value_size=16 * 1024,
)
KV_BUCKETS: tuple[KvDef, ...] = (KV_AGENTS, KV_NUMBERS, KV_CALLS, KV_HISTORY, KV_SECRETS)


def _p(cls: type[Payload]) -> str:
    return cls.subject_pattern()


# ------------------------------------------------------------------ consumers
STT_UTTERANCES = ConsumerDef(
    "CALLS", "stt-utterances", (_p(ev.UtteranceCaptured),), ack_wait_s=30, max_deliver=4,
    description="stt: transcribe utterances", concurrency=2,
)
BRAIN_TURNS = ConsumerDef(
    "CALLS", "brain-turns",
    (_p(ev.TranscriptFinalized), _p(ev.CallStarted), _p(ev.CallAnswered), _p(ev.CallEnded),
     _p(ev.SupervisorWhispered),
     _p(ev.DtmfReceived), _p(ev.ToolApprovalDecided), _p(ev.PlayoutStarted), _p(ev.PlayoutMarked),
     _p(ev.PlayoutFinished)),
    ack_wait_s=60, max_deliver=4, description="brain: greet, take turns", concurrency=16,
)
TTS_REPLIES = ConsumerDef(
    "CALLS", "tts-replies", (_p(ev.ReplyChunk),), ack_wait_s=30, max_deliver=4,
    description="tts: synthesize reply chunks", concurrency=4,
)
MEDIA_CALLS = ConsumerDef(
    "CALLS", "media-calls", (_p(ev.CallStarted),), ack_wait_s=30, max_deliver=4,
    description="media: claim new calls (one replica per call)",
)
ANALYTICS_RECORDER = ConsumerDef(
    "CALLS", "analytics-recorder",
    (_p(ev.CallStarted), _p(ev.CallAnswered), _p(ev.CallEnded), _p(ev.TurnCompleted)),
    ack_wait_s=30, max_deliver=8, deliver_policy="all",
    description="analytics: persist calls and turns to PostgreSQL", concurrency=8,
)
ANALYTICS_RECORDINGS = ConsumerDef(
    "CALLS", "analytics-recordings", (_p(ev.CallStarted),), ack_wait_s=30, max_deliver=8,
    description="analytics: claim the calls of recording agents and record them live (one replica per call)",
    concurrency=8,
)
# the events a tenant's webhooks receive (delivered from analytics' outbox, voice_analytics.webhooks)
WEBHOOK_EVENT_TYPES: tuple[type[Payload], ...] = (
    ev.CallStarted, ev.CallEnded, ev.TranscriptFinalized, ev.CallSummarized, ev.SentimentAlert,
    ev.ToolApprovalRequested,
)
ANALYTICS_WEBHOOKS = ConsumerDef(
    "CALLS", "analytics-webhooks", tuple(_p(t) for t in WEBHOOK_EVENT_TYPES),
    ack_wait_s=30, max_deliver=8, deliver_policy="all",
    description="analytics: queue webhook deliveries (PostgreSQL outbox, one row per endpoint and event)",
    concurrency=8,
)
ANALYTICS_SENTIMENT = ConsumerDef(
    "CALLS", "analytics-sentiment", (_p(ev.TranscriptFinalized),),
    ack_wait_s=30, max_deliver=8, deliver_policy="all",
    description="analytics: score each final caller utterance (VADER), publish and store it",
    concurrency=1,  # in stream order: a call's rolling sentiment follows its utterances
)
CONSUMERS: tuple[ConsumerDef, ...] = (
    STT_UTTERANCES, BRAIN_TURNS, TTS_REPLIES, MEDIA_CALLS, ANALYTICS_RECORDER, ANALYTICS_RECORDINGS,
    ANALYTICS_WEBHOOKS, ANALYTICS_SENTIMENT,
)
