"""Handlers per event type: a service declares them; its durable consumer's filter is derived from them.

    class BrainService(Service):
        turns = Handlers(BRAIN_TURNS)

        @turns.on(events.CallStarted)
        async def on_call_started(self, env: Envelope[events.CallStarted]) -> None: ...

``Service.start`` consumes every ``Handlers`` declared on the class with the filter subjects of its handlers
and refuses to start when the consumer's declared filter (``schemas/voice_schemas/streams.py``, the contract
the AsyncAPI document and operators read) names other event types than the handlers take: an event type with
no handler would otherwise be acked silently, and a handler with no filter would never run.

The ack policy stays explicit and lives in ``bus.py`` (``deliver``): a handler returns (ack), raises
``Transient`` (nak with backoff) or anything else (dead letter). An event type that reaches a consumer with no
handler for it is poison.

Core subscriptions (broadcast to every replica, not durable) share one parse/catch/log path:
``Service.on_events`` for JSON envelopes, ``Service.on_raw`` for real-time frames (``catching``).
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from voice_schemas import Envelope, UnknownEventType, parse
from voice_schemas.envelope import Payload
from voice_schemas.streams import ConsumerDef

from . import metrics
from .logging import get_logger, safe_error

log = get_logger(__name__)

# what a durable consumer calls: one parsed envelope (the ack policy wraps it)
EnvelopeHandler = Callable[[Envelope[Any]], Awaitable[None]]
# a handler declared on a service class: (self, envelope)
MethodHandler = Callable[[Any, Envelope[Any]], Awaitable[None]]


class Message(Protocol):
    """A message as core subscriptions see it (a NATS ``Msg`` or the in-memory bus's)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    reply: str  # a core request's inbox ("" for a plain message)


RawHandler = Callable[[Message], Awaitable[None]]


# which delivery of the message the running handler got (1 = first): for logs and tests
delivery: contextvars.ContextVar[int] = contextvars.ContextVar("delivery", default=1)


class NoHandler(Exception):
    """An event type reached a consumer that declares no handler for it (a poison message)."""


class Handlers:
    """The handlers of one durable consumer, by event type."""

    def __init__(self, consumer: ConsumerDef) -> None:
        self.declared = consumer
        self._by_type: dict[type[Payload], MethodHandler] = {}

    def on(self, *types: type[Payload]) -> Callable[[MethodHandler], MethodHandler]:
        """Decorator: this method handles these event types."""

        def register(fn: MethodHandler) -> MethodHandler:
            for t in types:
                if t in self._by_type:
                    raise ValueError(f"{self.declared.durable}: two handlers for {t.__name__}")
                self._by_type[t] = fn
            return fn

        return register

    @property
    def event_types(self) -> tuple[type[Payload], ...]:
        return tuple(self._by_type)

    def filter_subjects(self) -> tuple[str, ...]:
        return tuple(sorted({t.subject_pattern() for t in self._by_type}))

    def drift(self) -> str | None:
        """Why the declared consumer and the handlers disagree, or None when they match."""
        declared, handled = set(self.declared.filter_subjects), set(self.filter_subjects())
        if declared == handled:
            return None
        parts = []
        if declared - handled:
            parts.append(f"filtered without a handler: {sorted(declared - handled)}")
        if handled - declared:
            parts.append(f"handled but not in the declared filter: {sorted(handled - declared)}")
        return f"consumer {self.declared.durable}: " + "; ".join(parts)

    def consumer(self, **overrides: Any) -> ConsumerDef:
        """The consumer to provision: the declared one, filtered on exactly what the handlers take."""
        return dataclasses.replace(self.declared, filter_subjects=self.filter_subjects(), **overrides)

    def bind(self, owner: Any) -> EnvelopeHandler:
        """The dispatching handler for ``owner`` (the service instance)."""
        by_type = dict(self._by_type)
        durable = self.declared.durable

        async def dispatch(env: Envelope[Any]) -> None:
            fn = by_type.get(type(env.data))
            if fn is None:
                raise NoHandler(f"{durable} has no handler for {env.type}")
            await fn(owner, env)

        return dispatch


def declared_handlers(cls: type) -> list[Handlers]:
    """Every ``Handlers`` declared on a class or its bases, in definition order."""
    seen: dict[int, Handlers] = {}
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            if isinstance(value, Handlers):
                seen[id(value)] = value
    return list(seen.values())


def catching(service: str, subject: str, fn: RawHandler) -> RawHandler:
    """A core-subscription callback that never raises: failures are counted and logged, not propagated."""

    async def cb(msg: Message) -> None:
        try:
            await fn(msg)
        except Exception as e:
            metrics.ERRORS.labels(service, "core_subscription").inc()
            log.warning("core_handler_failed", subject=subject, error=safe_error(e))

    return cb


def envelope_callback(service: str, subject: str, fn: EnvelopeHandler) -> RawHandler:
    """Parse a JSON envelope, then call ``fn``; garbage is counted and dropped (durable consumers judge it)."""

    async def on_message(msg: Message) -> None:
        try:
            env = parse(msg.data)
        except (ValueError, UnknownEventType) as e:
            metrics.ERRORS.labels(service, "unparseable").inc()
            log.warning("core_message_unparseable", subject=subject, error=safe_error(e, 200))
            return
        await fn(env)

    return catching(service, subject, on_message)
