"""JetStream streams, KV buckets and durable consumers: defined here, once.

The runtime provisions these idempotently; services refer to them by the constants below. How many servers keep
a copy of each stream and bucket is the deployment's choice (``Placement``, from ``NATS_REPLICAS``), not the
definition's: 1 on one machine, 3 (or 5) on a NATS cluster. Durable consumers inherit their stream's replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from . import events as ev
from .envelope import Payload

Storage = Literal["file", "memory"]
# replica counts a stream may have: one server, or a quorum of a 3- or 5-server cluster
REPLICA_COUNTS = (1, 3, 5)


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
    replicas: int = 1


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
    # while a handler runs, "still working" is sent this often, so ``ack_wait_s`` bounds how long the message of a
    # replica that died stays with it (takeover), not how long a handler may take; None: no heartbeat
    heartbeat_s: float | None = None


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


@dataclass(frozen=True)
class Placement:
    """How this deployment keeps the streams and buckets: ``replicas`` servers hold a copy of each (a publish is
    acknowledged once a majority has it, so a 3-replica stream loses nothing acknowledged when one server dies),
    and the AUDIO stream's storage. CALLS, DEADLETTER and the KV buckets keep the storage their definition names
    whatever is set (file for every acknowledged fact, which memory storage would lose when a server restarts)."""

    replicas: int = 1
    audio_storage: Storage = "file"

    def __post_init__(self) -> None:
        if self.replicas not in REPLICA_COUNTS:
            raise ValueError(f"stream replicas must be one of {REPLICA_COUNTS}, not {self.replicas}")
        if self.audio_storage not in ("file", "memory"):
            raise ValueError(f"storage is file or memory, not {self.audio_storage!r}")

    def stream(self, d: StreamDef) -> StreamDef:
        """``d`` as this deployment provisions it."""
        return replace(d, replicas=self.replicas, storage=self.audio_storage if d.name == AUDIO.name else d.storage)

    def bucket(self, d: KvDef) -> KvDef:
        return replace(d, replicas=self.replicas)


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
KV_REPLICAS = KvDef(
    "replicas", "Liveness of the replicas that hold calls: i.<replica_id> = last heartbeat (ingress); a key that "
    "ages out (no heartbeat for ttl_s) is a dead replica, whose calls the others end or take over", ttl_s=1.2,
    storage="memory",
    max_value_size=1024,
)
KV_TRUNKS = KvDef("trunks", "SIP trunks per tenant: t.<trunk_id> = SipTrunk JSON (passwords are tenant secret names)")
KV_BUCKETS: tuple[KvDef, ...] = (
    KV_AGENTS, KV_NUMBERS, KV_CALLS, KV_HISTORY, KV_SECRETS, KV_REPLICAS, KV_TRUNKS,
)


def _p(cls: type[Payload]) -> str:
    return cls.subject_pattern()


# ------------------------------------------------------------------ consumers
# The consumers of a turn's path take over a dead replica's message within their ack wait (a live handler sends
# heartbeats): TAKEOVER_S. Their deliveries count every takeover, so max_deliver leaves room for a few.
TAKEOVER_S = 1.5
HEARTBEAT_S = 0.4

STT_UTTERANCES = ConsumerDef(
    "CALLS", "stt-utterances", (_p(ev.UtteranceCaptured),), ack_wait_s=TAKEOVER_S, heartbeat_s=HEARTBEAT_S,
    max_deliver=6, description="stt: transcribe utterances", concurrency=2,
)
BRAIN_TURNS = ConsumerDef(
    "CALLS", "brain-turns",
    (_p(ev.TranscriptFinalized), _p(ev.CallStarted), _p(ev.CallAnswered), _p(ev.CallEnded),
     _p(ev.SupervisorWhispered),
     _p(ev.DtmfReceived), _p(ev.ToolApprovalDecided), _p(ev.TransferFailed), _p(ev.PlayoutStarted),
     _p(ev.DtmfSent), _p(ev.HoldEnded),
     _p(ev.PlayoutMarked), _p(ev.PlayoutFinished)),
    ack_wait_s=TAKEOVER_S, heartbeat_s=HEARTBEAT_S, max_deliver=6, description="brain: greet, take turns",
    concurrency=16,
)
BRAIN_APPROVALS = ConsumerDef(
    "CALLS", "brain-approvals", (_p(ev.ToolApprovalRequested),), ack_wait_s=30, max_deliver=20,
    description="brain: the durable timeout of pending tool approvals (each request comes back when it is due, "
    "to whichever replica is alive, and is denied unless decided)", concurrency=4,
)
TTS_REPLIES = ConsumerDef(
    "CALLS", "tts-replies", (_p(ev.ReplyChunk),), ack_wait_s=TAKEOVER_S, heartbeat_s=HEARTBEAT_S, max_deliver=6,
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
ANALYTICS_SUMMARIES = ConsumerDef(
    "CALLS", "analytics-summaries", (_p(ev.CallEnded),),
    ack_wait_s=90, max_deliver=8, deliver_policy="all", backoff_s=(2.0, 10.0, 30.0, 60.0),
    description="analytics: once a call has ended and settled, summarise it (the agent's model, else extractive), "
    "compute its KPIs and cost, store them and publish analytics.summary",
    concurrency=4,
)
ANALYTICS_TOOLS = ConsumerDef(
    "CALLS", "analytics-tools",
    (_p(ev.ToolCallRequested), _p(ev.ToolApprovalRequested), _p(ev.ToolApprovalDecided), _p(ev.ToolResultReturned)),
    ack_wait_s=30, max_deliver=8, deliver_policy="all",
    description="analytics: the tool-call ledger (calls, approvals and their decisions, results)",
    concurrency=1,  # in stream order: a call's request comes before its decision and result
)
CONSUMERS: tuple[ConsumerDef, ...] = (
    STT_UTTERANCES, BRAIN_TURNS, BRAIN_APPROVALS, TTS_REPLIES, MEDIA_CALLS, ANALYTICS_RECORDER, ANALYTICS_RECORDINGS,
    ANALYTICS_WEBHOOKS, ANALYTICS_SENTIMENT, ANALYTICS_TOOLS, ANALYTICS_SUMMARIES,
)
