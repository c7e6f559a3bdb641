"""analytics writes calls and turns exactly once, whichever way a copy of an event arrives.

Three mechanisms stand between a copy and a second row, and each test below leaves only one of them able to
stop its copy, so that disabling that one fails that test:

- JetStream drops a re-publish with the same ``Nats-Msg-Id`` (the event id) inside the stream's duplicate
  window: the recorder never sees the copy;
- the recorder's ledger (``processed_events``, keyed by event id) skips an event it applied before, which is
  what a redelivery (or a re-publish past the duplicate window) meets;
- the tables themselves: one turn row per (call, turn, speaker), one call row per call id, and the first end of a
  call kept, for a *new* event (new event id) about something already recorded.

No sleeps: each step waits, bounded, for what the recorder did with the messages (its handled-message counters
in this process) and for its durable consumer to have nothing pending or unacknowledged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from voice_analytics.recorder import CONSUMER
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_runtime.bus import Bus
from voice_schemas import Envelope, events, make, subjects
from voice_schemas.streams import ANALYTICS_RECORDER

from .waiting import until

pytestmark = pytest.mark.integration

TENANT = "tenant-rec"


def handled(outcome: str) -> float:
    """Messages the recorder (in this process) finished with this outcome: ack, nak or dead_letter."""
    labels = {"service": AnalyticsService.name, "consumer": CONSUMER, "outcome": outcome}
    return REGISTRY.get_sample_value("voice_bus_events_handled_total", labels) or 0.0



@dataclass
class Recorder:
    """The analytics service on a NATS server of this test's own, a bus to publish with, the database."""

    bus: Bus
    db: asyncpg.Connection
    acks_at_start: float
    dead_letters_at_start: float

    def acks(self) -> int:
        return int(handled("ack") - self.acks_at_start)

    async def settled(self, acks: int) -> None:
        """Wait until the recorder has acked ``acks`` messages in all and its consumer holds nothing more."""

        async def done() -> bool:
            assert handled("dead_letter") == self.dead_letters_at_start, "the recorder dead-lettered a message"
            if self.acks() < acks:
                return False
            info = await self.bus.js.consumer_info(ANALYTICS_RECORDER.stream, CONSUMER)
            return not info.num_pending and not info.num_ack_pending

        await until(done, f"the recorder to ack {acks} messages (acked {self.acks()})")
        assert self.acks() == acks, "the recorder handled a message more than expected"
        assert handled("dead_letter") == self.dead_letters_at_start, "the recorder dead-lettered a message"

    async def republish(self, env: Envelope[Any]) -> None:
        """The same event bytes under a new message id: what a redelivery past the duplicate window looks like."""
        ack = await self.bus.js.publish(env.subject, env.to_bytes(), headers={"Nats-Msg-Id": subjects.new_id()})
        assert not ack.duplicate

    async def turns(self, call_id: str) -> list[tuple[str, str, str]]:
        rows = await self.db.fetch(
            "SELECT turn_id, speaker, text FROM call_turns WHERE call_id = $1 ORDER BY turn_id, speaker", call_id
        )
        return [(r["turn_id"], r["speaker"], r["text"]) for r in rows]

    async def ledger(self, *envs: Envelope[Any]) -> int:
        return int(
            await self.db.fetchval(
                "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = ANY($2::text[])",
                CONSUMER,
                [e.id for e in envs],
            )
        )


@pytest.fixture
async def recorder(private_nats_url: str, database_url: str) -> AsyncIterator[Recorder]:
    svc = AnalyticsService(AnalyticsSettings(nats_url=private_nats_url, database_url=database_url))
    await svc.start()
    bus = await Bus.connect(private_nats_url, "test")
    db = await asyncpg.connect(database_url)
    try:
        yield Recorder(bus, db, handled("ack"), handled("dead_letter"))
    finally:
        await db.close()
        await bus.close()
        await svc.stop()


def started(call_id: str, agent_version: int = 2) -> Envelope[events.CallStarted]:
    return make(
        events.CallStarted(agent_id="a1", agent_version=agent_version, channel="twilio"),
        tenant_id=TENANT,
        call_id=call_id,
    )


def turn(call_id: str, turn_id: str, caller: str, agent: str) -> Envelope[events.TurnCompleted]:
    return make(
        events.TurnCompleted(
            caller_text=caller, agent_text=agent, latency=events.LatencyBreakdown(voice_to_voice_ms=812.0)
        ),
        tenant_id=TENANT,
        call_id=call_id,
        turn_id=turn_id,
    )


def ended(call_id: str, reason: events.EndReason, duration_s: float) -> Envelope[events.CallEnded]:
    return make(events.CallEnded(reason=reason, duration_s=duration_s), tenant_id=TENANT, call_id=call_id)


async def test_jetstream_drops_a_republish_of_the_same_event(recorder: Recorder) -> None:
    """Bus.publish names the message by its event id: a second publish inside the duplicate window is not
    stored, so the recorder gets the event once (the ledger and the tables never see the copy)."""
    call_id = subjects.new_call_id()
    env = started(call_id)
    first = await recorder.bus.publish(env)
    again = await recorder.bus.publish(env)
    assert again.duplicate and again.seq == first.seq
    await recorder.settled(acks=1)
    assert await recorder.db.fetchval("SELECT agent_version FROM calls WHERE id = $1", call_id) == 2


async def test_ledger_skips_an_event_id_it_applied(recorder: Recorder) -> None:
    """A copy that gets past JetStream (new message id) reaches the recorder, which acks it and changes nothing
    because its event id is in ``processed_events``. The copy names another turn, so the tables alone would
    take it: only the ledger can stop it."""
    call_id = subjects.new_call_id()
    await recorder.bus.publish(started(call_id))
    original = turn(call_id, "turn-1", "hello", "Hi there.")
    await recorder.bus.publish(original)
    await recorder.settled(acks=2)
    assert await recorder.turns(call_id) == [("turn-1", "agent", "Hi there."), ("turn-1", "caller", "hello")]

    copy = turn(call_id, "turn-2", "a copy", "Not again.").model_copy(update={"id": original.id})
    await recorder.republish(copy)
    await recorder.settled(acks=3)  # delivered and acked: JetStream did not drop it
    assert await recorder.turns(call_id) == [("turn-1", "agent", "Hi there."), ("turn-1", "caller", "hello")]
    assert await recorder.ledger(original) == 1


async def test_tables_keep_one_row_for_new_events_about_recorded_things(recorder: Recorder) -> None:
    """New events (new ids, so neither JetStream nor the ledger stop them) about a turn, a call start and a call
    end already recorded: each is applied (its ledger row is written with it) and the rows stay as first
    written, by the unique (call, turn, speaker) and call id constraints and the first-end-wins update."""
    call_id = subjects.new_call_id()
    first_start = started(call_id, agent_version=2)
    first_turn = turn(call_id, "turn-1", "hello", "Hi there.")
    first_end = ended(call_id, events.EndReason.caller_hangup, 3.5)
    for env in (first_start, first_turn, first_end):
        await recorder.bus.publish(env)
        await recorder.settled(acks=recorder.acks() + 1)  # in order: each later event finds the earlier rows

    later = (
        started(call_id, agent_version=3),
        turn(call_id, "turn-1", "hello again", "Hi again."),
        ended(call_id, events.EndReason.agent_hangup, 9.0),
    )
    for env in later:
        await recorder.bus.publish(env)
    await recorder.settled(acks=6)

    assert await recorder.ledger(*later) == 3, "a later event was not applied"
    assert await recorder.turns(call_id) == [("turn-1", "agent", "Hi there."), ("turn-1", "caller", "hello")]
    call = await recorder.db.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
    assert (call["agent_version"], call["status"], call["end_reason"], call["duration_s"]) == (
        2,
        "ended",
        "caller_hangup",
        3.5,
    )


async def test_a_turn_before_its_call_is_retried_not_lost(recorder: Recorder) -> None:
    call_id = subjects.new_call_id()
    naks = handled("nak")
    await recorder.bus.publish(turn(call_id, "turn-1", "hello", "Hi there."))

    async def retried() -> bool:
        return handled("nak") > naks

    await until(retried, "the recorder to refuse the turn while its call row is missing")
    assert await recorder.turns(call_id) == []
    await recorder.bus.publish(started(call_id))
    await recorder.bus.publish(ended(call_id, events.EndReason.caller_hangup, 3.5))
    await recorder.settled(acks=3)
    assert await recorder.turns(call_id) == [("turn-1", "agent", "Hi there."), ("turn-1", "caller", "hello")]
    call = await recorder.db.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
    assert call["status"] == "ended" and call["end_reason"] == "caller_hangup" and call["duration_s"] == 3.5
