"""Replies begun on the likely-final transcript (``voice_brain.early``): taken when the final transcript says the
same, dropped otherwise, never spoken or stored on their own; on the in-memory bus and on a real NATS server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from voice_brain.chat import ChatRequest, Delta
from voice_brain.early import EarlyReplies
from voice_brain.service import BrainService
from voice_runtime.ports import BusPort
from voice_schemas import events

from .calls import Call, make_agent
from .fakes import FakeChatProvider, FakeReply
from .test_service import start_brain

QUESTION = "When do you open on Sunday?"


@pytest.fixture
def llm() -> FakeChatProvider:
    # slow enough that the final transcript arrives while the early completion still streams
    return FakeChatProvider(default=FakeReply(content="We open at ten on Sundays. Anything else?",
                                              token_delay_s=0.02))


@pytest.fixture
async def brain(any_bus: BusPort, llm: FakeChatProvider) -> AsyncIterator[BrainService]:
    svc = await start_brain(any_bus, llm)
    yield svc
    await svc.stop()


async def _requests(llm: FakeChatProvider, n: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while len(llm.requests) < n:
            await asyncio.sleep(0.01)


def _likely(text: str, end_ms: int = 1500) -> events.TranscriptPartial:
    return events.TranscriptPartial(utterance_id="t1", text=text, start_ms=0, end_ms=end_ms, likely_final=True)


async def _settle(call: Call, turn_id: str) -> events.TurnCompleted:
    await call.pub(events.PlayoutStarted(first_audio_wall_ms=2.0), turn_id=turn_id)
    chunks = await call.wait(events.ReplyChunk, turn_id, final=True)
    await call.pub(events.PlayoutFinished(heard_chunks=[c.data.index for c in chunks]), turn_id=turn_id)
    done: events.TurnCompleted = (await call.wait(events.TurnCompleted, turn_id))[0].data
    return done


async def test_a_reply_begun_on_the_likely_final_words_is_taken_when_the_final_says_the_same(
        any_bus: BusPort, brain: BrainService, llm: FakeChatProvider) -> None:
    agent = await make_agent(any_bus)
    async with Call(any_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(_likely(QUESTION), turn_id="t1")
        await _requests(llm, 1)
        await asyncio.sleep(0.1)  # the early completion streams meanwhile: nothing goes out, nothing is stored
        assert not call.of(events.ReplyChunk, "t1")
        assert brain.history is not None
        h = await brain.history.get(call.call_id)
        assert h is not None and "t1" not in h.turns and h.messages[-1]["role"] == "assistant"
        await call.pub(events.TranscriptFinalized(utterance_id="t1", text=QUESTION, speech_end_wall_ms=1.0),
                       turn_id="t1")
        chunks = [e.data for e in await call.wait(events.ReplyChunk, "t1", final=True)]
        assert " ".join(c.text for c in chunks if c.text) == "We open at ten on Sundays. Anything else?"
        assert len(llm.requests) == 1  # the model was asked once: the early request was the reply's
        assert llm.requests[0][2].messages[-1] == {"role": "user", "content": QUESTION}
        done = await _settle(call, "t1")
        lat = done.latency
        assert lat.early_start_ms is not None and lat.early_start_ms >= 100
        # the stage counts from the model's real start, so it is not flattered by the head start
        assert lat.llm_first_sentence_ms is not None and lat.llm_first_sentence_ms >= lat.early_start_ms - 50


async def test_different_final_words_drop_the_early_reply_and_ask_the_model_again(
        any_bus: BusPort, brain: BrainService, llm: FakeChatProvider) -> None:
    llm.replies["When do you"] = FakeReply(content="This reply must never be heard.", token_delay_s=0.05)
    agent = await make_agent(any_bus)
    async with Call(any_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(_likely("When do you"), turn_id="t1")
        await _requests(llm, 1)
        await call.pub(events.TranscriptFinalized(utterance_id="t1", text=QUESTION), turn_id="t1")
        chunks = [e.data for e in await call.wait(events.ReplyChunk, "t1", final=True)]
        assert " ".join(c.text for c in chunks if c.text) == "We open at ten on Sundays. Anything else?"
        assert len(llm.requests) == 2 and llm.requests[1][2].messages[-1]["content"] == QUESTION
        done = await _settle(call, "t1")
        assert done.latency.early_start_ms is None
        assert brain.early is not None and call.call_id not in brain.early.calls


async def test_no_early_reply_for_a_turn_already_known_or_when_turned_off(any_bus: BusPort,
                                                                         llm: FakeChatProvider) -> None:
    off = await start_brain(any_bus, llm, early_replies=False)
    try:
        agent = await make_agent(any_bus)
        async with Call(any_bus, agent) as call:
            await call.wait(events.ReplyChunk, "greeting")
            await call.pub(_likely(QUESTION), turn_id="t1")
            await asyncio.sleep(0.3)
            assert not llm.requests
    finally:
        await off.stop()
    on = await start_brain(any_bus, llm)
    try:
        async with Call(any_bus, agent) as call:
            await call.wait(events.ReplyChunk, "greeting")
            await call.pub(events.TranscriptFinalized(utterance_id="t1", text=QUESTION), turn_id="t1")
            await call.wait(events.ReplyChunk, "t1", final=True)
            asked = len(llm.requests)
            await call.pub(_likely(QUESTION), turn_id="t1")  # late: the turn is answered already
            await asyncio.sleep(0.3)
            assert len(llm.requests) == asked
    finally:
        await on.stop()


# ---------------------------------------------------------------- the registry on its own
async def _stream(n: int, delay: float = 0.01) -> AsyncIterator[Delta]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield Delta(text=f"w{i} ")


@pytest.mark.unit
async def test_the_registry_replays_then_follows_and_bounds_what_it_holds() -> None:
    early = EarlyReplies(max_calls=2, ttl_s=60)
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    model = ("http://x/v1", "m")
    a = early.begin("c1", "t1", model, req, lambda: _stream(5))
    assert a is not None
    await asyncio.sleep(0.025)  # some deltas buffered, the rest still coming
    assert early.take("c1", "t2", model, req) is None and early.calls["c1"] is a  # another turn's: left alone
    other = ChatRequest(messages=[{"role": "user", "content": "hello"}])
    assert early.take("c1", "t1", model, other) is None and "c1" not in early.calls  # other words: a miss
    await asyncio.sleep(0.01)
    assert a.task is not None and a.task.cancelled()
    c = early.begin("c1", "t1", model, req, lambda: _stream(5))
    taken = early.take("c1", "t1", model, req)
    assert taken is not None and taken is c
    assert [d.text async for d in taken.replay()] == [f"w{i} " for i in range(5)]
    # at most max_calls calls hold one; a call's newer one replaces its older one
    assert early.begin("c2", "t1", model, req, lambda: _stream(50)) is not None
    first = early.begin("c3", "t1", model, req, lambda: _stream(50))
    assert first is not None
    assert early.begin("c4", "t1", model, req, lambda: _stream(50)) is None
    again = early.begin("c3", "t2", model, req, lambda: _stream(50))
    await asyncio.sleep(0.01)
    assert first.task is not None and first.task.cancelled() and early.calls["c3"] is again
    early.stop()
    assert not early.calls


@pytest.mark.unit
async def test_an_early_reply_older_than_its_ttl_is_not_taken() -> None:
    early = EarlyReplies(ttl_s=0.05)
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    e = early.begin("c1", "t1", ("u", "m"), req, lambda: _stream(100))
    assert e is not None
    await asyncio.sleep(0.1)
    assert early.take("c1", "t1", ("u", "m"), req) is None
    await asyncio.sleep(0.01)
    assert e.task is not None and e.task.done()
