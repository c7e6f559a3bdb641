"""What a stage needs of the bus, as interfaces: ``Bus`` (NATS) and ``InMemoryBus`` (tests) both provide them.

Domain code takes a ``Publisher``; a service takes a ``BusPort``. Nothing outside ``bus.py`` touches the NATS
client or the JetStream context directly.
"""

from __future__ import annotations

from typing import Any, Protocol

from voice_schemas import Envelope
from voice_schemas.streams import ConsumerDef, KvDef, StreamDef

from .handlers import EnvelopeHandler, RawHandler


class Publisher(Protocol):
    async def publish(self, env: Envelope[Any], *, timeout: float = 5.0) -> Any:
        """A durable event (JetStream, deduplicated on the event id)."""

    async def publish_nowait(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """A real-time frame (fire and forget)."""


class Unsubscribable(Protocol):
    async def unsubscribe(self) -> None: ...


class Stoppable(Protocol):
    async def stop(self, grace_s: float = 20.0) -> None: ...


class BusPort(Publisher, Protocol):
    service: str

    @property
    def connected(self) -> bool: ...

    async def provision(self, streams: tuple[StreamDef, ...] = ..., buckets: tuple[KvDef, ...] = ...,
                        consumers: tuple[ConsumerDef, ...] = ()) -> dict[str, Any]: ...

    async def subscribe(self, subject: str, cb: RawHandler, *, queue: str = "") -> Unsubscribable: ...

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """Core request/reply: the first answer's body; ``NoResponders`` / ``TimeoutError``."""

    async def consume(self, d: ConsumerDef, handler: EnvelopeHandler) -> Stoppable: ...

    async def last_message(self, stream: str, subject: str) -> tuple[int, bytes] | None: ...

    async def drain(self) -> None: ...
