"""A call through a transport the session has never heard of (``FakeTransport``), on the in-memory bus.

The service and session run unchanged; only the caller's protocol is fake. Each test places a call and
checks one behaviour of the transport-neutral call: caller audio and DTMF published, agent audio paced to the
transport in chunk order, marks turned into heard chunks, clear on barge-in, stale epochs dropped, the ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_ingress.transports.base import CallerAudio, CallerHungUp, DtmfPressed, MarkPlayed, Started
from voice_runtime.memory import MemoryMessage
from voice_schemas import events, make, subjects
from voice_schemas.audio import FRAME_BYTES, AudioFrame

from .fakes import FRAME_S, NUMBER, FakeTransport, Ingress, VirtualClock, reply, tag

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    async with Ingress.running() as i:
        yield i


async def control(i: Ingress, call_id: str, cmd: Any, *, epoch: int = 0, turn_id: str | None = None) -> None:
    await i.bus.publish(make(cmd, tenant_id="tenant-a", call_id=call_id, epoch=epoch, turn_id=turn_id))


def marked(i: Ingress, call_id: str, turn: str) -> list[int]:
    return [e.data.chunk for e in i.events(events.PlayoutMarked, call_id=call_id) if e.turn_id == turn]


def finished(i: Ingress, call_id: str, turn: str) -> list[events.PlayoutFinished]:
    return [e.data for e in i.events(events.PlayoutFinished, call_id=call_id) if e.turn_id == turn]


async def test_caller_audio_and_dtmf_are_published(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, _ = await ingress.call(t)
    answered = ingress.events(events.CallAnswered, call_id=call_id)[0].data
    assert answered.stream_id == "fake-stream" and answered.media_format == "audio/L16;rate=16000"
    frames: list[MemoryMessage] = []

    async def on_audio(msg: Any) -> None:
        frames.append(msg)

    await ingress.bus.subscribe(subjects.audio_in(call_id), on_audio)
    pcm = [bytes([i]) * FRAME_BYTES for i in range(5)]
    t.push(CallerAudio(tuple(pcm[:2])), CallerAudio(()), CallerAudio(tuple(pcm[2:])), DtmfPressed("7"))
    await ingress.bus.wait_for(lambda: len(frames) == 5 and ingress.events(events.DtmfReceived))
    got = [AudioFrame.from_message(m.data, m.headers) for m in frames]
    assert [f.pcm for f in got] == pcm
    assert [(f.seq, f.ts_ms, f.epoch) for f in got] == [(n, 20 * n, 0) for n in range(1, 6)]
    dtmf = ingress.events(events.DtmfReceived, call_id=call_id)
    assert [e.data.digit for e in dtmf] == ["7"]


async def test_agent_audio_reaches_the_transport_in_chunk_order_paced_with_marks(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, _ = await ingress.call(t)
    chunks = reply("t1", [10, 15])
    chunks[0][0] = dataclasses.replace(chunks[0][0], synth_ms=61.5)  # tts's time to the reply's first frame
    # tts replicas synthesize chunks in parallel: chunk 1 arrives first, interleaved with chunk 0
    await ingress.send_agent_audio(call_id, chunks[1][:5] + chunks[0][:4] + chunks[1][5:] + chunks[0][4:])
    await ingress.bus.wait_for(lambda: len(t.of("mark")) == 2, timeout=10)
    kinds = [(s.kind, tag(s.data) if s.kind == "audio" else s.data) for s in t.sent]
    expected = [("audio", f"t1/0/{i}") for i in range(10)] + [("mark", "t1:0:0")] \
        + [("audio", f"t1/1/{i}") for i in range(15)] + [("mark", "t1:0:1:f")]
    assert kinds == expected
    assert [s.end_of_reply for s in t.of("audio")] == [False] * 24 + [True]
    # never more than the lead (3 frames) plus the one being sent queued at the far end (a loaded machine only
    # queues less); the exact pace is checked on a virtual clock below
    lead = ingress.service.settings.playout_lead_ms // 20
    assert t.max_queued_frames <= lead + 1
    started = ingress.events(events.PlayoutStarted, call_id=call_id)
    assert [e.turn_id for e in started] == ["t1"]
    assert started[0].data.tts_first_audio_ms == 61.5  # handed on to brain's turn.completed


async def test_playout_runs_at_real_time_pace_with_its_lead_on_a_virtual_clock(ingress: Ingress) -> None:
    clock = VirtualClock()
    ingress.service.clock = clock
    t = FakeTransport()
    call_id, _ = await ingress.call(t)
    sent_at: list[float] = []
    send = t.send

    async def timed(message: Any) -> None:
        if message[0] == "audio":
            sent_at.append(clock.now)
        await send(message)

    t.send = timed  # type: ignore[method-assign]
    for chunk in reply("t1", [25, 25]):  # 1 s of audio, all of it here at once
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
    lead = ingress.service.settings.playout_lead_ms // 20
    assert len(sent_at) == 50 and lead == 3
    start = sent_at[0]
    # the far end starts playing frame 0 at `start` and plays one frame per 20 ms: after frame k is sent, it holds
    # the frames not played yet, never more than the lead plus the frame just sent
    queued = [k + 1 - (at - start) / FRAME_S for k, at in enumerate(sent_at)]
    assert max(queued) == pytest.approx(lead + 1)
    # and no faster than real time: the first lead + 1 frames at once, then exactly one frame per 20 ms
    assert sent_at == pytest.approx([start + max(0, k - lead) * FRAME_S for k in range(50)])


async def test_marks_that_come_back_become_heard_chunks(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, _ = await ingress.call(t)
    for chunk in reply("t1", [3, 3, 3]):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=10)
    assert marked(ingress, call_id, "t1") == [0, 1, 2]
    assert finished(ingress, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=[0, 1, 2])]
    t.push(MarkPlayed("t1:0:2:f"), MarkPlayed("someone-else's"))  # a repeat, and a mark that is not ours
    await asyncio.sleep(0.1)
    assert marked(ingress, call_id, "t1") == [0, 1, 2]


async def test_barge_in_clears_queued_audio_and_drops_the_stale_epoch(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, _ = await ingress.call(t)
    long_reply = reply("t2", [5] * 20)  # 2 s of audio in 20 chunks
    for chunk in long_reply:
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: len(t.of("audio")) >= 30, timeout=10)
    await control(ingress, call_id, events.BargeIn(at_ms=1000, speech_ms=400), epoch=1)
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t2"), timeout=5)
    clear = t.of("clear")
    assert len(clear) == 1
    # the transport dropped what it had queued, and nothing of the old reply followed the clear
    assert t.dropped_frames >= 1
    assert not [s for s in t.sent if s.at > clear[0].at and s.kind == "audio"]
    # marks returned for cleared audio are not heard; heard chunks are exactly those marked before the clear
    [done] = finished(ingress, call_id, "t2")
    assert done.cleared and done.heard_chunks == marked(ingress, call_id, "t2")
    assert len(done.heard_chunks) < 20
    assert not {f"t2:0:{c}" for c in done.heard_chunks} & set(t.cleared_marks)
    # late frames of the cancelled reply (epoch 0) are dropped; the next turn (epoch 1) plays
    sent_before = len(t.sent)
    await ingress.send_agent_audio(call_id, reply("t2", [5] * 22)[21])
    for chunk in reply("t3", [4], epoch=1):
        await ingress.send_agent_audio(call_id, chunk)
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t3"), timeout=5)
    assert [tag(s.data) for s in t.sent[sent_before:] if s.kind == "audio"] == [f"t3/0/{i}" for i in range(4)]
    assert finished(ingress, call_id, "t3") == [events.PlayoutFinished(cleared=False, heard_chunks=[0])]
    assert all(e.epoch == 1 for e in ingress.events(events.PlayoutMarked, call_id=call_id) if e.turn_id == "t3")


async def test_pause_holds_audio_and_resume_continues_where_it_paused(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, _ = await ingress.call(t)
    await control(ingress, call_id, events.PausePlayout())
    await ingress.bus.settle()
    for chunk in reply("t1", [5]):
        await ingress.send_agent_audio(call_id, chunk)
    await asyncio.sleep(0.2)
    assert not t.of("audio")
    await control(ingress, call_id, events.ResumePlayout())
    await ingress.bus.wait_for(lambda: finished(ingress, call_id, "t1"), timeout=5)
    assert [tag(s.data) for s in t.of("audio")] == [f"t1/0/{i}" for i in range(5)]


# a backchannel's pause, then resume: test_pause_takeback.py


async def test_caller_hang_up_ends_the_call_and_frees_its_state(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, task = await ingress.call(t, provider_call_id="CA0123")
    calls = ingress.bus.kv["calls"]
    assert len(calls) == 2  # the record and the provider id's key
    t.push(CallerHungUp())
    await asyncio.wait_for(task, 5)
    [ended] = ingress.events(events.CallEnded, call_id=call_id)
    assert ended.data.reason == events.EndReason.caller_hangup and ended.id == f"{call_id}-ended"
    assert t.closed_with == events.EndReason.caller_hangup
    assert call_id not in ingress.service.sessions and len(calls) == 0
    assert not [s for s in ingress.bus._subs if call_id in s.subject]  # per-call subscriptions are gone


async def test_agent_hang_up_waits_for_the_goodbye_to_play(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, task = await ingress.call(t)
    # the goodbye turn is still being synthesized when the hang-up arrives
    await control(ingress, call_id, events.HangUp(after_playout=True), turn_id="bye")
    await ingress.bus.settle()
    assert not task.done()
    for chunk in reply("bye", [4, 4]):
        await ingress.send_agent_audio(call_id, chunk)
    await asyncio.wait_for(task, 5)
    [ended] = ingress.events(events.CallEnded, call_id=call_id)
    assert ended.data.reason == events.EndReason.agent_hangup
    assert finished(ingress, call_id, "bye") == [events.PlayoutFinished(cleared=False, heard_chunks=[0, 1])]
    assert len(t.of("audio")) == 8


async def test_agent_hang_up_with_nothing_to_play_ends_at_once(ingress: Ingress) -> None:
    t = FakeTransport()
    call_id, task = await ingress.call(t)
    await control(ingress, call_id, events.HangUp(after_playout=True))
    await asyncio.wait_for(task, 5)
    assert t.closed_with == events.EndReason.agent_hangup


async def test_protocol_garbage_ends_only_that_call_with_the_reason(ingress: Ingress) -> None:
    good, bad = FakeTransport(), FakeTransport()
    good_id, good_task = await ingress.call(good)
    bad_id, bad_task = await ingress.call(bad)
    bad.push("garbage")
    await asyncio.wait_for(bad_task, 5)
    [ended] = ingress.events(events.CallEnded, call_id=bad_id)
    assert ended.data.reason == events.EndReason.protocol_error and ended.data.detail == "garbage on the wire"
    assert bad.closed_with == events.EndReason.protocol_error
    # the other call still plays audio
    for chunk in reply("t1", [3]):
        await ingress.send_agent_audio(good_id, chunk)
    await ingress.bus.wait_for(lambda: finished(ingress, good_id, "t1"), timeout=5)
    assert not good_task.done() and good_id in ingress.service.sessions


async def test_a_connection_that_never_starts_or_names_no_call_is_refused(ingress: Ingress) -> None:
    ingress.service.settings.start_timeout_s = 0.2
    silent = FakeTransport()
    await asyncio.wait_for(ingress.service.serve(silent, silent.messages()), 5)
    assert silent.closed_with == events.EndReason.protocol_error
    early = FakeTransport()
    early.push(DtmfPressed("1"))
    await asyncio.wait_for(ingress.service.serve(early, early.messages()), 5)
    assert early.closed_with == events.EndReason.protocol_error
    stranger = FakeTransport()
    stranger.push(Started(call_id="no-such-call"))
    await asyncio.wait_for(ingress.service.serve(stranger, stranger.messages()), 5)
    assert stranger.closed_with == events.EndReason.protocol_error
    assert not ingress.service.sessions and not ingress.events(events.CallAnswered)


async def test_connection_lost_and_provider_and_remote_ends(ingress: Ingress) -> None:
    lost = FakeTransport()
    lost_id, lost_task = await ingress.call(lost)
    lost.disconnect()
    await asyncio.wait_for(lost_task, 5)
    assert ingress.events(events.CallEnded, call_id=lost_id)[0].data.reason == events.EndReason.connection_lost

    reported = FakeTransport()
    rep_id, rep_task = await ingress.call(reported, provider_call_id="CA42")
    await ingress.service.end_by_provider_id("CA42", events.EndReason.status_callback)
    await asyncio.wait_for(rep_task, 5)
    assert ingress.events(events.CallEnded, call_id=rep_id)[0].data.reason == events.EndReason.status_callback

    # ended by another replica: this one closes the connection without announcing it again
    remote = FakeTransport()
    rem_id, rem_task = await ingress.call(remote)
    await ingress.bus.publish(make(events.CallEnded(reason=events.EndReason.status_callback),
                                   tenant_id="tenant-a", call_id=rem_id, event_id=f"{rem_id}-ended"))
    await asyncio.wait_for(rem_task, 5)
    assert len(ingress.events(events.CallEnded, call_id=rem_id)) == 1
    assert remote.closed_with == events.EndReason.status_callback
    assert not ingress.service.sessions


async def test_stopping_the_service_ends_live_calls() -> None:
    i = Ingress()
    await i.start()
    t = FakeTransport()
    call_id, task = await i.call(t)
    await i.stop()
    await asyncio.wait_for(task, 5)
    assert i.events(events.CallEnded, call_id=call_id)[0].data.reason == events.EndReason.shutdown


async def connecting(ingress: Ingress, provider_call_id: str | None = None) -> tuple[str, FakeTransport,
                                                                                    asyncio.Task[None]]:
    """A created call whose caller connects, served without waiting for it to be answered."""
    call_id = await ingress.service.create_call(channel=events.Channel.test, to_number=NUMBER,
                                                from_number="+15550199", provider_call_id=provider_call_id)
    assert call_id is not None
    t = FakeTransport()
    t.push(Started(call_id=call_id, stream_id=t.stream_id))
    return call_id, t, asyncio.create_task(ingress.service.serve(t, t.messages()))


async def assert_nothing_left_of(ingress: Ingress, call_id: str) -> events.CallEnded:
    """The call left no registration, per-call subscription or playout task behind; its one CallEnded."""
    await ingress.bus.settle()
    assert call_id not in ingress.service.sessions
    assert not [s for s in ingress.bus._subs if call_id in s.subject]
    assert not [x for x in asyncio.all_tasks() if x.get_name() == f"playout:{call_id}" and not x.done()]
    [ended] = ingress.events(events.CallEnded, call_id=call_id)
    data: events.CallEnded = ended.data
    return data


async def test_a_call_whose_answer_cannot_be_published_ends_and_frees_everything(
        ingress: Ingress, monkeypatch: pytest.MonkeyPatch) -> None:
    publish = ingress.bus.publish

    async def failing(env: Any, **kw: Any) -> int:
        if isinstance(env.data, events.CallAnswered):
            raise ConnectionError("bus down")
        return await publish(env, **kw)

    monkeypatch.setattr(ingress.bus, "publish", failing)
    call_id, t, task = await connecting(ingress)
    await asyncio.wait_for(task, 5)
    ended = await assert_nothing_left_of(ingress, call_id)
    assert ended.reason == events.EndReason.error and "bus down" in (ended.detail or "")
    assert t.closed_with == events.EndReason.error


async def test_a_connection_cancelled_while_its_call_opens_ends_the_call_and_frees_everything(
        ingress: Ingress, monkeypatch: pytest.MonkeyPatch) -> None:
    publish = ingress.bus.publish
    answering = asyncio.Event()

    async def stuck(env: Any, **kw: Any) -> int:
        if isinstance(env.data, events.CallAnswered):
            answering.set()
            await asyncio.sleep(3600)  # the bus never acknowledges
        return await publish(env, **kw)

    monkeypatch.setattr(ingress.bus, "publish", stuck)
    call_id, t, task = await connecting(ingress)
    await asyncio.wait_for(answering.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ended = await assert_nothing_left_of(ingress, call_id)
    assert ended.reason == events.EndReason.shutdown and t.closed_with == events.EndReason.shutdown


async def test_a_reply_whose_last_frame_never_comes_is_closed_after_the_gap_and_the_next_reply_plays() -> None:
    async with Ingress.running(playout_gap_ms=300) as i:
        t = FakeTransport()
        call_id, _ = await i.call(t)
        lost = reply("t1", [4, 4])
        await i.send_agent_audio(call_id, lost[0] + lost[1][:-1])  # the final frame is lost on the way
        await i.bus.wait_for(lambda: finished(i, call_id, "t1"), timeout=5)
        # the caller heard chunk 0 (marked) and most of chunk 1 (never ended, so not marked)
        assert finished(i, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=[0])]
        assert [tag(s.data) for s in t.of("audio")] == [f"t1/0/{n}" for n in range(4)] + [f"t1/1/{n}" for n in range(3)]
        for chunk in reply("t2", [3]):
            await i.send_agent_audio(call_id, chunk)
        await i.bus.wait_for(lambda: finished(i, call_id, "t2"), timeout=5)
        assert [tag(s.data) for s in t.of("audio")][7:] == [f"t2/0/{n}" for n in range(3)]
        assert finished(i, call_id, "t2") == [events.PlayoutFinished(cleared=False, heard_chunks=[0])]


async def test_a_reply_superseded_by_a_newer_turn_does_not_hold_its_audio() -> None:
    # a gap far longer than the test: the newer turn's audio alone moves playout on
    async with Ingress.running(playout_gap_ms=10_000) as i:
        t = FakeTransport()
        call_id, _ = await i.call(t)
        # brain superseded t1 after its first sentence: no final chunk will ever come
        await i.send_agent_audio(call_id, reply("t1", [4, 4, 4])[0])
        await i.bus.wait_for(lambda: marked(i, call_id, "t1") == [0], timeout=5)
        for chunk in reply("t2", [3, 3]):
            await i.send_agent_audio(call_id, chunk)
        await i.bus.wait_for(lambda: finished(i, call_id, "t2"), timeout=5)
        assert [tag(s.data) for s in t.of("audio")] == [f"t1/0/{n}" for n in range(4)] \
            + [f"t2/{c}/{n}" for c in range(2) for n in range(3)]
        assert finished(i, call_id, "t2") == [events.PlayoutFinished(cleared=False, heard_chunks=[0, 1])]
        await i.bus.wait_for(lambda: finished(i, call_id, "t1"), timeout=5)
        assert finished(i, call_id, "t1") == [events.PlayoutFinished(cleared=False, heard_chunks=[0])]
        # a newer epoch's reply (its barge-in not seen yet) is not held behind an unfinished older one either
        await i.send_agent_audio(call_id, reply("t3", [4, 4])[0])
        await i.bus.wait_for(lambda: marked(i, call_id, "t3") == [0], timeout=5)
        for chunk in reply("t4", [2], epoch=1):
            await i.send_agent_audio(call_id, chunk)
        await i.bus.wait_for(lambda: finished(i, call_id, "t4"), timeout=5)
        assert [tag(s.data) for s in t.of("audio")][-2:] == ["t4/0/0", "t4/0/1"]


async def test_a_call_ended_while_it_opens_keeps_nothing_of_what_opening_still_set_up(
        ingress: Ingress, monkeypatch: pytest.MonkeyPatch) -> None:
    subscribe = ingress.bus.subscribe
    subscribing, go_on = asyncio.Event(), asyncio.Event()

    async def slow(subject: str, cb: Any, **kwargs: Any) -> Any:
        if subject.endswith(".control.>"):
            subscribing.set()
            await go_on.wait()
        return await subscribe(subject, cb, **kwargs)

    monkeypatch.setattr(ingress.bus, "subscribe", slow)
    call_id, _, task = await connecting(ingress, provider_call_id="CA77")
    await asyncio.wait_for(subscribing.wait(), 5)
    await ingress.service.end_by_provider_id("CA77", events.EndReason.status_callback)  # Twilio says it is over
    go_on.set()
    await asyncio.wait_for(task, 5)
    ended = await assert_nothing_left_of(ingress, call_id)
    assert ended.reason == events.EndReason.status_callback
    assert not ingress.events(events.CallAnswered, call_id=call_id)
