"""A pause stops what the caller hears at once (issue #13): the lead sent ahead is cleared at the caller's end and
taken back, a resume plays it again from where the caller stopped hearing, a barge-in drops it.

Playout runs on a virtual clock that the fake far end shares, so "the frames whose time had not come" are the same
frames for the session and for the far end: the caller hears (``FakeTransport.heard``) exactly what started to
play before a clear. The pause lands inside playout's own sleep, at an exact point of the reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from voice_ingress.transports.base import CallerHungUp, MarkPlayed
from voice_runtime.memory import MemoryMessage
from voice_schemas import events, subjects
from voice_schemas.audio import H_CUT

from .fakes import FRAME_S, FakeTransport, Ingress, Sent, VirtualClock, reply, tag
from .test_call_session import control, finished, marked

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

REPLY = [f"t1/{c}/{n}" for c in range(10) for n in range(5)]  # reply("t1", [5] * 10): 1 s of audio


class PausingClock(VirtualClock):
    """A virtual clock that runs ``action`` once, inside playout's sleep, as soon as ``when()`` holds."""

    def __init__(self) -> None:
        super().__init__()
        self.when: Callable[[], bool] | None = None
        self.action: Callable[[], Awaitable[None]] | None = None

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if self.when is not None and self.action is not None and self.when():
            self.when = None
            await self.action()


class CannotClear(FakeTransport):
    """A transport whose clear cannot stop audio already sent."""

    can_clear_queued = False


class LaggingQueue(FakeTransport):
    """A sender queue of our own (the WebRTC track, the RTP queue) whose clock runs a frame behind the session's
    estimate: its clear drops one frame more than the session counts as not played, and says so."""

    async def clear(self) -> int:
        now = self.clock()
        dropped = {i for i, s in enumerate(self.sent)
                   if s.kind == "audio" and i not in self.unheard and s.plays_at + FRAME_S > now}
        await super().clear()
        self.unheard |= dropped
        return len(dropped)


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    async with Ingress.running() as i:
        yield i


async def start(i: Ingress, transport: type[FakeTransport] = FakeTransport, *,
                pause_after: int) -> tuple[str, FakeTransport, PausingClock]:
    """A call whose playout pauses once ``pause_after`` agent frames have been sent."""
    clock = PausingClock()
    i.service.clock = clock
    t = transport(clock=clock.time)
    call_id, _ = await i.call(t)

    async def pause() -> None:
        await control(i, call_id, events.PausePlayout())
        await i.bus.settle()

    clock.when, clock.action = (lambda: len(t.of("audio")) >= pause_after), pause
    return call_id, t, clock


def tags(sent: list[Sent]) -> list[str]:
    return [tag(s.data) for s in sent if s.kind == "audio"]


def after(t: FakeTransport, kind: str) -> list[Sent]:
    """What was sent after the first message of ``kind``."""
    at = next(n for n, s in enumerate(t.sent) if s.kind == kind)
    return t.sent[at + 1:]


def started(i: Ingress, call_id: str, turn: str) -> int:
    return len([e for e in i.events(events.PlayoutStarted, call_id=call_id) if e.turn_id == turn])


async def test_a_pause_clears_the_lead_and_a_resume_plays_every_frame_once_in_order() -> None:
    async with Ingress.running(playout_gap_ms=200) as ingress:
        await a_backchannel(ingress)


async def a_backchannel(ingress: Ingress) -> None:
    """Media hears the caller start to speak and pauses playout until it knows whether this is a barge-in: a
    backchannel ("mm-hmm"), longer than the playout gap, then the agent goes on."""
    call_id, t, clock = await start(ingress, pause_after=16)
    tap: list[MemoryMessage] = []

    async def on_played(msg: Any) -> None:
        tap.append(msg)

    await ingress.bus.subscribe(subjects.audio_played(call_id), on_played)
    for chunk in reply("t1", [5] * 10):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
    await ingress.bus.settle()
    # the caller stops hearing at once: the frames sent ahead (the end of chunk 2 among them) are dropped there
    [clear] = t.of("clear")
    dropped = [tag(s.data) for n, s in enumerate(t.sent) if n in t.unheard]
    assert 2 <= len(dropped) <= 4 and "t1/2/4" in dropped and dropped == tags(t.sent)[-len(dropped):]
    assert all(s.plays_at <= clear.at for s in t.heard())
    assert not tags(after(t, "clear"))  # paused: nothing more is sent
    assert "t1:0:2" in t.cleared_marks  # echoed on the clear: it must not count as heard
    await ingress.bus.settle()
    assert 2 not in marked(ingress, call_id, "t1")
    clock.now += 0.4  # the backchannel: the reply is not given up for its gap while paused

    await control(ingress, call_id, events.ResumePlayout())
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
    # the reply goes on from where the caller stopped hearing: every frame heard exactly once, in order
    assert tags(t.heard()) == REPLY
    assert tags(after(t, "clear")) == REPLY[REPLY.index(dropped[0]):]
    # chunk 2's mark was sent again under another name, and every chunk counts once
    assert "t1:0:2:r1" in [s.data for s in t.of("mark")]
    assert marked(ingress, call_id, "t1") == list(range(10))
    assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=list(range(10)))]
    assert started(ingress, call_id, "t1") == 1
    # the played-audio tap: a cut where the caller stopped hearing, then the frames taken back reported again
    cuts = [n for n, m in enumerate(tap) if m.headers and m.headers.get(H_CUT)]
    assert len(cuts) == 1 and len(tap) - 1 == len(REPLY) + len(dropped)
    assert [tag(m.data) for m in tap[cuts[0] + 1:]] == REPLY[REPLY.index(dropped[0]):]


async def test_a_turn_ended_and_the_next_one_started_are_taken_back_and_play_on_once(ingress: Ingress) -> None:
    call_id, t, _ = await start(ingress, pause_after=5)
    for chunk in reply("a", [4]) + reply("b", [5]):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
    await ingress.bus.settle()
    dropped = [tag(s.data) for n, s in enumerate(t.sent) if n in t.unheard]
    assert "a/0/3" in dropped and "b/0/0" in dropped  # a's end of turn and b's first frame had not played
    await control(ingress, call_id, events.ResumePlayout())
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "a") and finished(ingress, call_id, "b"), timeout=10)
    assert tags(t.heard()) == [f"a/0/{n}" for n in range(4)] + [f"b/0/{n}" for n in range(5)]
    assert "a:0:0:f" in t.cleared_marks and "a:0:0:f:r1" in [s.data for s in t.of("mark")]
    assert finished(ingress, call_id, "a") == [events.PlayoutFinished(cleared=False, heard_chunks=[0])]
    assert finished(ingress, call_id, "b") == [events.PlayoutFinished(cleared=False, heard_chunks=[0])]
    assert started(ingress, call_id, "a") == started(ingress, call_id, "b") == 1  # PlayoutStarted once per turn


async def test_a_late_echo_of_a_mark_taken_back_does_not_count_for_the_mark_sent_again(ingress: Ingress) -> None:
    call_id, t, _ = await start(ingress, pause_after=16)
    t.echo_marks = False  # the test echoes them: Twilio's echo of a cleared mark may come after the resume
    for chunk in reply("t1", [5] * 10):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
    await ingress.bus.settle()
    await control(ingress, call_id, events.ResumePlayout())
    await ingress.bus.wait_for(lambda: len(t.of("mark")) == 11, timeout=10)
    before = [s.data for s in t.sent[:t.sent.index(t.of("clear")[0])] if s.kind == "mark"]
    again = [s.data for s in after(t, "clear") if s.kind == "mark"]
    assert before == ["t1:0:0", "t1:0:1", "t1:0:2"] and len(again) == 8
    t.push(*(MarkPlayed(name) for name in before))  # chunk 2's is the late echo of the mark cleared
    await ingress.bus.settle()
    assert marked(ingress, call_id, "t1") == [0, 1]
    t.push(*(MarkPlayed(name) for name in again))
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=5)
    assert marked(ingress, call_id, "t1") == list(range(10))
    assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=list(range(10)))]


async def test_a_barge_in_after_a_pause_drops_what_was_taken_back(ingress: Ingress) -> None:
    call_id, t, _ = await start(ingress, pause_after=16)
    for chunk in reply("t1", [5] * 10):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
    await ingress.bus.settle()
    await control(ingress, call_id, events.BargeIn(at_ms=1000, speech_ms=400), epoch=1)
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=5)
    # the caller heard the reply up to the pause, once, and nothing of it after
    heard = tags(t.heard())
    assert heard == REPLY[:len(heard)] and "t1/2/4" not in heard
    assert not tags(after(t, "clear"))
    [done] = finished(ingress, call_id, "t1")
    assert done.cleared and done.heard_chunks == marked(ingress, call_id, "t1") == [0, 1]
    # the next turn (epoch 1) plays
    for chunk in reply("t3", [4], epoch=1):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t3"), timeout=5)
    assert tags(after(t, "clear")) == [f"t3/0/{n}" for n in range(4)]
    assert tags(t.heard())[len(heard):] == [f"t3/0/{n}" for n in range(4)]


async def test_a_transport_whose_clear_cannot_stop_sent_audio_is_not_cleared_on_a_pause(ingress: Ingress) -> None:
    call_id, t, _ = await start(ingress, CannotClear, pause_after=16)
    for chunk in reply("t1", [5] * 10):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: len(t.of("audio")) >= 16, timeout=10)
    await ingress.bus.settle()
    held = len(t.of("audio"))
    await control(ingress, call_id, events.ResumePlayout())
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
    assert held < len(REPLY) and not t.of("clear")
    assert tags(t.sent) == tags(t.heard()) == REPLY  # nothing sent twice: the caller would hear it twice
    assert marked(ingress, call_id, "t1") == list(range(10))


async def test_a_sender_queue_of_our_own_says_how_much_it_dropped(ingress: Ingress) -> None:
    call_id, t, _ = await start(ingress, LaggingQueue, pause_after=16)
    for chunk in reply("t1", [5] * 10):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
    await ingress.bus.settle()
    dropped = [tag(s.data) for n, s in enumerate(t.sent) if n in t.unheard]
    assert len(dropped) >= 3  # one frame more than the session counts as not played (two or three)
    await control(ingress, call_id, events.ResumePlayout())
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
    # the frame the session thought played went back too: nothing lost, nothing heard twice
    assert tags(after(t, "clear")) == REPLY[REPLY.index(dropped[0]):]
    assert tags(t.heard()) == REPLY
    assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=list(range(10)))]


async def test_a_pause_then_a_hang_up_ends_the_call(ingress: Ingress) -> None:
    call_id, t, _ = await start(ingress, pause_after=16)
    for chunk in reply("t1", [5] * 10):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
    t.push(CallerHungUp())
    await ingress.bus.wait_for(lambda: bool(ingress.events(events.CallEnded, call_id=call_id)), timeout=5)
    assert t.closed_with == events.EndReason.caller_hangup and call_id not in ingress.service.sessions
    assert len(tags(after(t, "clear"))) == 0
