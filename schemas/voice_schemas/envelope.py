"""The versioned envelope every durable event travels in, and the event-type registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from . import subjects

SCHEMA_VERSION = 1

Transport = Literal["durable", "realtime"]


class Payload(BaseModel):
    """Base of every event body. Unknown fields are ignored so additive changes stay compatible."""

    model_config = ConfigDict(extra="ignore")

    TYPE: ClassVar[str]
    # subject tokens after ``call.<call_id>``, e.g. ("transcript", "final")
    SUBJECT: ClassVar[tuple[str, ...]]
    TRANSPORT: ClassVar[Transport] = "durable"
    DESCRIPTION: ClassVar[str] = ""

    @classmethod
    def subject_for(cls, call_id: str) -> str:
        return subjects.call_subject(call_id, *cls.SUBJECT)

    @classmethod
    def subject_pattern(cls) -> str:
        return subjects.any_call(*cls.SUBJECT)


REGISTRY: dict[str, type[Payload]] = {}


def register(cls: type[Payload]) -> type[Payload]:
    if cls.TYPE in REGISTRY:
        raise ValueError(f"duplicate event type {cls.TYPE}")
    REGISTRY[cls.TYPE] = cls
    return cls


P = TypeVar("P", bound=Payload)


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    """What goes on the wire for a durable event (JSON)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=subjects.new_id, description="Event id; also the Nats-Msg-Id")
    type: str
    schema_version: int = SCHEMA_VERSION
    tenant_id: str
    call_id: str
    turn_id: str | None = None
    epoch: int = 0
    seq: int = 0
    occurred_at: datetime = Field(default_factory=_now)
    data: P

    @property
    def subject(self) -> str:
        return type(self.data).subject_for(self.call_id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class UnknownEventType(ValueError):
    pass


def make(
    data: P,
    *,
    tenant_id: str,
    call_id: str,
    turn_id: str | None = None,
    epoch: int = 0,
    seq: int = 0,
    event_id: str | None = None,
) -> Envelope[P]:
    """Wrap a payload in an envelope (validates the call id)."""
    subjects.check_id(call_id, "call_id")
    kw: dict[str, Any] = {}
    if event_id is not None:
        kw["id"] = event_id
    model: Any = Envelope[type(data)]  # type: ignore[misc]
    return model(
        type=data.TYPE,
        tenant_id=tenant_id,
        call_id=call_id,
        turn_id=turn_id,
        epoch=epoch,
        seq=seq,
        data=data,
        **kw,
    )


def parse(raw: bytes | str) -> Envelope[Any]:
    """Parse wire JSON into an envelope whose ``data`` is the registered payload type.

    Raises ``pydantic.ValidationError`` or ``UnknownEventType`` for bad input.
    """
    obj = json.loads(raw)
    if not isinstance(obj, dict) or "type" not in obj:
        raise UnknownEventType("event has no type")
    cls = REGISTRY.get(obj["type"])
    if cls is None:
        raise UnknownEventType(f"unknown event type {obj['type']!r}")
    return Envelope[cls].model_validate(obj)  # type: ignore[valid-type]
