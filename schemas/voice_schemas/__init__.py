"""Event contracts of the voice platform: envelope, payloads, subjects, streams, audio format."""

from . import audio, events, streams, subjects
from .agent import AgentConfig, CallRecord, NumberRoute
from .envelope import REGISTRY, SCHEMA_VERSION, Envelope, Payload, UnknownEventType, make, parse

__all__ = [
    "REGISTRY", "SCHEMA_VERSION", "AgentConfig", "CallRecord", "Envelope", "NumberRoute", "Payload",
    "UnknownEventType", "audio", "events", "make", "parse", "streams", "subjects",
]
