"""What the use cases need from the running service, and the id of the request being served."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from voice_runtime.egress import EgressPolicy
from voice_runtime.ports import BusPort
from voice_runtime.recordings import RecordingStore
from voice_runtime.secretbox import SecretBox

from .feeds import FeedSlots
from .kvsync import ConfigPublisher
from .proxies import TrustedProxies
from .ratelimit import RateLimiter
from .security import AccessTokens, Passwords
from .settings import ControlApiSettings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@dataclass
class AppContext:
    settings: ControlApiSettings
    pool: asyncpg.Pool
    publisher: ConfigPublisher
    tokens: AccessTokens
    passwords: Passwords
    limiter: RateLimiter
    request_resync: Callable[[], None]
    proxies: TrustedProxies
    egress: EgressPolicy  # what tenant URLs (an agent's LLM endpoint) may reach
    secret_box: SecretBox | None  # None without SECRETS_KEY: tenant secrets are refused
    bus: BusPort | None = None  # core requests to the data plane (text chats to ingress)
    kv: Mapping[str, Any] = field(default_factory=dict)  # the data plane's KV buckets (live call records)
    recordings: RecordingStore | None = None  # where analytics stores call recordings (served, deleted here)
    js: Any = None  # the data plane's JetStream context (nats.js.JetStreamContext): live feeds read CALLS
    feeds: FeedSlots = field(default_factory=FeedSlots)  # live feeds open on this replica
