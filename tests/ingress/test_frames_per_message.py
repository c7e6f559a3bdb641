"""Several agent frames per transport message (``Transport.frames_per_message``; Twilio's
``TWILIO_FRAMES_PER_MESSAGE``, 2 by default): fewer, larger messages at the same real-time pace, never across a
chunk's mark, the played-audio tap one message per send, and a pause's take-back exact per frame. And the other way,
caller frames per ``audio.in`` message (``CALLER_FRAMES_PER_MESSAGE``) once the replica carries
``CALLER_FRAMES_FROM_CALLS`` calls; and tts's frames several an ``audio.out`` message (``TTS_FRAMES_PER_MESSAGE``).

Playout runs on a virtual clock that the fake far end shares (as in test_pause_takeback).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from voice_ingress.settings import IngressSettings
from voice_ingress.transports.base import CallerAudio, CallerHungUp
from voice_runtime.memory import MemoryMessage
from voice_schemas import events, subjects
from voice_schemas.audio import FRAME_BYTES, H_CUT, H_SEQ, H_TS, AudioFrame, frames_in

from .fakes import FRAME_S, FakeTransport, Ingress, VirtualClock, reply, tag
from .test_call_session import control, finished, marked
from .test_pause_takeback import after, start, tags

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


class Batching(FakeTransport):
    """A far end that takes two frames a message (as ingress's Twilio stream does): each ``play_frames`` is one
    send, recorded as the tags it carried."""

    frames_per_message = 2

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sends: list[list[str]] = []  # per send: the frames' tags, or ["mark:<name>"]

    async def play_frames(self, pcms: Sequence[bytes], *, end_of_reply: bool = False) -> None:
        self.sends.append([tag(p) for p in pcms])
        await super().play_frames(pcms, end_of_reply=end_of_reply)

    async def mark(self, name: str) -> None:
        self.sends.append([f"mark:{name}"])
        await super().mark(name)


async def batching_call(ingress: Ingress) -> tuple[str, Batching]:
    """A call whose far end takes two frames a message, on a virtual clock ingress shares."""
    clock = VirtualClock()
    ingress.service.clock = clock
    t = Batching(clock=clock.time)
    call_id, _ = await ingress.call(t)
    return call_id, t


async def test_frames_go_two_a_message_at_the_same_pace_and_never_across_a_mark() -> None:
    async with Ingress.running() as ingress:
        call_id, t = await batching_call(ingress)
        tap: list[MemoryMessage] = []

        async def on_played(msg: Any) -> None:
            tap.append(msg)

        await ingress.bus.subscribe(subjects.audio_played(call_id), on_played)
        for chunk in reply("t1", [5, 4]):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
        assert t.sends == [["t1/0/0", "t1/0/1"], ["t1/0/2", "t1/0/3"], ["t1/0/4"], ["mark:t1:0:0"],
                           ["t1/1/0", "t1/1/1"], ["t1/1/2", "t1/1/3"], ["mark:t1:0:1:f"]]
        assert marked(ingress, call_id, "t1") == [0, 1]
        assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=[0, 1])]
        # real-time pace: the far end never ran dry and never held more than the lead (60 ms) and one send more
        audio = t.of("audio")
        assert [tag(s.data) for s in t.heard()] == [f"t1/0/{n}" for n in range(5)] + [f"t1/1/{n}" for n in range(4)]
        assert all(b.plays_at == pytest.approx(a.plays_at + FRAME_S) for a, b in itertools.pairwise(audio))
        assert t.max_queued_frames <= 5
        # the played-audio tap: one message per send, its frames back to back, stamped at the end of the last
        await ingress.bus.settle()
        played = [m for m in tap if not (m.headers or {}).get(H_CUT)]
        assert [len(m.data) // FRAME_BYTES for m in played] == [2, 2, 1, 2, 2]
        assert b"".join(m.data for m in played) == b"".join(s.data for s in audio)
        ends = [int((m.headers or {})[H_TS]) for m in played]
        # each ends where the next begins: 20 ms a frame
        assert [b - a for a, b in itertools.pairwise(ends)] == [40, 20, 40, 40]


async def test_a_pause_takes_back_each_frame_of_a_send_and_the_resume_plays_each_once() -> None:
    async with Ingress.running(playout_gap_ms=200) as ingress:
        call_id, t, clock = await start(ingress, Batching, pause_after=15)
        for chunk in reply("t1", [5] * 10):
            await ingress.send_agent_audio(call_id, chunk)
        await ingress.bus.wait_for(lambda: bool(t.of("clear")), timeout=10)
        await ingress.bus.settle()
        dropped = [tag(s.data) for n, s in enumerate(t.sent) if n in t.unheard]
        assert 2 <= len(dropped) <= 5 and dropped == tags(t.sent)[-len(dropped):]
        assert not tags(after(t, "clear"))
        clock.now += 0.4
        await control(ingress, call_id, events.ResumePlayout())
        await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
        whole = [f"t1/{c}/{n}" for c in range(10) for n in range(5)]
        assert tags(t.heard()) == whole
        assert tags(after(t, "clear")) == whole[whole.index(dropped[0]):]
        assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=list(range(10)))]
        assert max(len(s) for s in t.sends) == 2


# ------------------------------------------------------------ caller frames per audio.in message
def test_caller_frames_are_batched_only_from_the_set_number_of_calls() -> None:
    s = IngressSettings(caller_frames_per_message=3, caller_frames_from_calls=20)
    assert [s.caller_frames_for(n) for n in (0, 1, 19, 20, 21, 500)] == [1, 1, 1, 3, 3, 3]
    assert IngressSettings(caller_frames_from_calls=0).caller_frames_for(0) == 2  # 0: always, the default size
    with pytest.raises(ValueError):
        IngressSettings(caller_frames_per_message=6)


async def caller_messages(ingress: Ingress, transport: FakeTransport, pushes: list[tuple[bytes, ...]],
                          expect: int) -> tuple[str, list[MemoryMessage]]:
    call_id, _ = await ingress.call(transport)
    got: list[MemoryMessage] = []

    async def on_audio(msg: Any) -> None:
        got.append(msg)

    await ingress.bus.subscribe(subjects.audio_in(call_id), on_audio)
    transport.push(*(CallerAudio(p) for p in pushes))
    await ingress.bus.wait_for(lambda: len(got) == expect)
    return call_id, got


async def test_a_loaded_replica_sends_caller_frames_two_a_message_stamped_as_the_last() -> None:
    async with Ingress.running(caller_frames_from_calls=1) as ingress:  # this one call is "loaded"
        pcm = [bytes([i]) * FRAME_BYTES for i in range(1, 6)]
        t = FakeTransport()
        # frames arrive one or two at a time (as Twilio's and RTP's do); messages never mix up their order
        call_id, got = await caller_messages(ingress, t, [(pcm[0],), (pcm[1], pcm[2]), (), (pcm[3],), (pcm[4],)], 2)
        assert [m.data for m in got] == [pcm[0] + pcm[1], pcm[2] + pcm[3]]
        assert [frames_in(m.data) for m in got] == [2, 2]
        assert [(int(m.headers[H_SEQ]), int(m.headers[H_TS])) for m in got] == [(2, 40), (4, 80)]
        # the fifth frame waits for a sixth; the call's end sends it rather than losing it
        t.push(CallerHungUp())
        await ingress.bus.wait_for(lambda: len(got) == 3 and ingress.events(events.CallEnded, call_id=call_id))
        assert got[2].data == pcm[4] and (int(got[2].headers[H_SEQ]), int(got[2].headers[H_TS])) == (5, 100)


async def test_below_the_set_number_of_calls_each_caller_frame_goes_at_once() -> None:
    async with Ingress.running(caller_frames_from_calls=2) as ingress:  # one call: not loaded
        pcm = [bytes([i]) * FRAME_BYTES for i in range(1, 4)]
        _, got = await caller_messages(ingress, FakeTransport(), [(pcm[0], pcm[1]), (pcm[2],)], 3)
        assert [m.data for m in got] == pcm
        assert [int(m.headers[H_TS]) for m in got] == [20, 40, 60]


# ------------------------------------------------------------ agent frames several an audio.out message
def joined(frames: list[AudioFrame]) -> AudioFrame:
    """Consecutive frames of a chunk as tts sends them in one message: the first's seq and index, the last's
    flags."""
    first, last = frames[0], frames[-1]
    return dataclasses.replace(first, pcm=b"".join(f.pcm for f in frames), last_in_chunk=last.last_in_chunk,
                               final=last.final)


async def test_agent_frames_several_a_message_play_as_the_same_frames_and_a_resent_chunk_plays_once() -> None:
    async with Ingress.running() as ingress:
        call_id, t = await batching_call(ingress)
        c0, c1 = ([dataclasses.replace(f, frame=i) for i, f in enumerate(c)] for c in reply("t1", [7, 4]))
        # chunk 0 in messages of 3, 3 and 1 frames; chunk 1 from a tts replica that died after 2 frames, then
        # all of it again from the one that took it over (the frames already had are dropped, not played twice)
        for msg in [joined(c0[0:3]), joined(c0[3:6]), joined(c0[6:7]), joined(c1[0:2]), joined(c1[0:4])]:
            await ingress.bus.publish_nowait(subjects.audio_out(call_id), msg.pcm, msg.headers())
        await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
        assert [tag(s.data) for s in t.heard()] == [f"t1/0/{n}" for n in range(7)] + [f"t1/1/{n}" for n in range(4)]
        assert marked(ingress, call_id, "t1") == [0, 1]
        assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=[0, 1])]
