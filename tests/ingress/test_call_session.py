"""A call through a transport the session has never heard of (``FakeTransport``), on the in-memory bus.

The service and session run unchanged; only the caller's protocol is fake. Each test places a call and
checks one behaviour of the transport-neutral call: caller audio and DTMF published, agent audio paced to the
transport in chunk order, marks turned into heard chunks, clear on barge-in, stale epochs dropped, the ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_ingress.transports.base import CallerAudio, CallerHungUp, DtmfPressed, MarkPlayed, Started
from voice_runtime.memory import MemoryMessage
from voice_schemas import events, make, subjects
from voice_schemas.audio import FRAME_BYTES, AudioFrame

from .fakes import FRAME_S, FakeTransport, Ingress, reply, tag

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    i = Ingress()
    await i.start()
    try:
        yield i
    finally:
        await i.stop()


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
    # tts replicas synthesize chunks in parallel: chunk 1 arrives first, interleaved with chunk 0
    await ingress.send_agent_audio(call_id, chunks[1][:5] + chunks[0][:4] + chunks[1][5:] + chunks[0][4:])
    await ingress.bus.wait_for(lambda: len(t.of("mark")) == 2, timeout=10)
    kinds = [(s.kind, tag(s.data) if s.kind == "audio" else s.data) for s in t.sent]
    expected = [("audio", f"t1/0/{i}") for i in range(10)] + [("mark", "t1:0:0")] \
        + [("audio", f"t1/1/{i}") for i in range(15)] + [("mark", "t1:0:1:f")]
    assert kinds == expected
    assert [s.end_of_reply for s in t.of("audio")] == [False] * 24 + [True]
    # real time: never more than the lead (3 frames) plus the one being sent queued at the far end
    lead = ingress.service.settings.playout_lead_ms // 20
    assert t.max_queued_frames <= lead + 1
    audio = t.of("audio")
    assert audio[-1].at - audio[0].at >= (len(audio) - lead - 2) * FRAME_S
    started = ingress.events(events.PlayoutStarted, call_id=call_id)
    assert [e.turn_id for e in started] == ["t1"]


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
