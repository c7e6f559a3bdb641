"""Durable traffic for the NATS outage tests: a publisher that keeps publishing events and remembers which were
acknowledged, and a service (the real ``Service`` start path: settings, placement, provisioning, a declared
durable consumer) that records every delivery it handles.

"Nothing acknowledged is lost" is checked by event id: every id the publisher got an ack for is handled, and the
stream stores every id once (JetStream's duplicate window absorbs the publisher's retries). A handler may see an id
twice only as a redelivery (its ack was lost with the server), never as a first delivery of a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from voice_runtime.bus import NATS_UNAVAILABLE, Bus
from voice_runtime.handlers import Handlers, delivery
from voice_runtime.service import Service
from voice_runtime.settings import CommonSettings
from voice_schemas import Envelope, events, make, subjects
from voice_schemas.streams import ConsumerDef

from ..waiting import until

# a short ack wait: a delivery whose ack died with its server comes back within seconds
CONSUMER = ConsumerDef(
    "CALLS", "resilience-dtmf", (events.DtmfReceived.subject_pattern(),), ack_wait_s=3, max_deliver=20,
    backoff_s=(0.2, 0.5, 1.0), deliver_policy="all", concurrency=8,
    description="tests: every DTMF event, recorded",
)


class Recorder(Service):
    """A stage with one durable consumer that records (event id, delivery number) of what it handled."""

    name = "resilience"
    dtmf = Handlers(CONSUMER)

    def __init__(self, settings: CommonSettings) -> None:
        super().__init__(settings)
        self.handled: list[tuple[str, int]] = []

    @dtmf.on(events.DtmfReceived)
    async def on_dtmf(self, env: Envelope[events.DtmfReceived]) -> None:
        self.handled.append((env.id, delivery.get()))

    @property
    def nats(self) -> Bus:
        assert isinstance(self.bus, Bus)
        return self.bus

    def ids(self) -> set[str]:
        return {i for i, _ in self.handled}

    def first_deliveries(self) -> Counter[str]:
        return Counter(i for i, n in self.handled if n == 1)


@dataclass
class Publisher:
    """Publishes one event after another on its own connection until stopped; ``acked`` holds the ids the stream
    acknowledged, ``failed`` those whose publish gave up (NATS unavailable for the whole timeout)."""

    bus: Bus
    call_id: str = field(default_factory=subjects.new_call_id)
    acked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        digits = "0123456789*#"
        n = 0
        while not self._stop.is_set():
            env = make(events.DtmfReceived(digit=digits[n % len(digits)]), tenant_id="t", call_id=self.call_id)
            n += 1
            try:
                await self.bus.publish(env)
                self.acked.append(env.id)
            except NATS_UNAVAILABLE:
                self.failed.append(env.id)
            await asyncio.sleep(0.01)

    async def acked_more(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more events than now are acknowledged."""
        target = len(self.acked) + n

        async def enough() -> bool:
            return len(self.acked) >= target

        await until(enough, f"{n} more acknowledged publishes", timeout)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def start_recorder(nats_url: str, replicas: int = 1) -> Recorder:
    svc = Recorder(CommonSettings(nats_url=nats_url, nats_replicas=replicas, shutdown_grace_s=1.0))
    await svc.start()
    return svc


async def stored_ids(bus: Bus, call_id: str, settle_s: float = 30.0) -> Counter[str]:
    """How many times the CALLS stream stores each event id of ``call_id`` (read back with an ordered, ephemeral
    consumer). Right after a server of a cluster was killed, its JetStream API may still be electing a leader (a
    timeout or a 503): the read is tried again for up to ``settle_s`` (what is stored does not change meanwhile)."""
    subject = subjects.call_subject(call_id, *events.DtmfReceived.SUBJECT)
    deadline = asyncio.get_running_loop().time() + settle_s
    while True:
        try:
            sub = await bus.js.subscribe(subject, ordered_consumer=True)
            break
        except NATS_UNAVAILABLE:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    info = await bus.js.stream_info("CALLS", subjects_filter=subject)
    total = (info.state.subjects or {}).get(subject, 0)
    out: Counter[str] = Counter()
    try:
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            out[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1
    finally:
        await sub.unsubscribe()
    return out


async def check_nothing_lost(svc: Recorder, bus: Bus, pub: Publisher, handled_before: set[str],
                             timeout: float = 30.0) -> dict[str, Any]:
    """Every acknowledged event is handled; the stream stores each id once; an event is handled twice only when it
    was handled before the outage ended (``handled_before``: its ack was lost with the server). Returns the
    counts."""
    acked = set(pub.acked)

    async def all_handled() -> bool:
        return acked <= svc.ids()

    await until(all_handled, f"the {len(acked)} acknowledged events handled", timeout)
    stored = await stored_ids(bus, pub.call_id)
    doubled = {i: c for i, c in stored.items() if c > 1}
    assert not doubled, f"stored more than once: {doubled}"
    assert acked <= set(stored), "an acknowledged event is missing from the stream"
    twice = {i for i, c in Counter(i for i, _ in svc.handled).items() if c > 1}
    counts = {"acked": len(acked), "failed": len(pub.failed), "stored": len(stored), "handled": len(svc.handled),
              "handled_twice": len(twice), "handled_before_outage": len(handled_before), "first_twice":
              sum(1 for c in svc.first_deliveries().values() if c > 1)}
    print(counts)
    assert twice <= handled_before, f"handled twice though first handled after the outage: {counts}"
    return counts
