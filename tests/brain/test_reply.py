"""The reply streamer with a fake chat model: sentences as they complete, limits, end_call, the apology."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from voice_brain.chat import ChatLimits, ChatRequest, ChatTimeout, Delta, Endpoint, ToolCall
from voice_brain.conversation import SentChunk
from voice_brain.reply import GOODBYE, SAY_AGAIN, ReplyOutcome, ReplySuperseded, stream_reply

from .fakes import FakeChatProvider, FakeReply

pytestmark = pytest.mark.unit

APOLOGY = "Sorry, I'm having trouble answering right now."
REQUEST = ChatRequest(messages=[{"role": "system", "content": "Be a baker."},
                                {"role": "user", "content": "When do you open?"}])


class Sink:
    """``emit`` for the streamer: keeps each chunk."""

    def __init__(self) -> None:
        self.chunks: list[SentChunk] = []
        self.first = asyncio.Event()

    async def __call__(self, chunk: SentChunk) -> None:
        self.chunks.append(chunk)
        self.first.set()

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.chunks]


async def noting_close(deltas: AsyncIterator[Delta], closed: asyncio.Event) -> AsyncIterator[Delta]:
    """``deltas``, setting ``closed`` once the streamer has closed them."""
    try:
        async for d in deltas:
            yield d
    finally:
        closed.set()


async def run(reply: FakeReply, limits: ChatLimits | None = None) -> tuple[ReplyOutcome, Sink]:
    provider = FakeChatProvider(default=reply)
    if limits is not None:
        provider.limits = limits
    sink = Sink()
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    outcome = await stream_reply(model.stream(REQUEST), sink, apology=APOLOGY)
    return outcome, sink


async def test_sentences_go_out_as_soon_as_they_are_complete() -> None:
    provider = FakeChatProvider(default=FakeReply(content="Sure. We open at eight in the morning. See you then!",
                                                  token_delay_s=0.01))
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    sink = Sink()
    task = asyncio.create_task(stream_reply(model.stream(REQUEST), sink, apology=APOLOGY))
    await asyncio.wait_for(sink.first.wait(), 2)
    assert not task.done()  # the first sentence went out while the model was still streaming
    outcome = await task
    assert sink.texts == ["Sure. We open at eight in the morning.", "See you then!"]
    assert [c.final for c in sink.chunks] == [False, True] and [c.index for c in sink.chunks] == [0, 1]
    assert outcome == ReplyOutcome(chunks=2, hang_up=False)
    first = sink.chunks[0].timings
    assert first is not None and sink.chunks[1].timings is None
    assert first.llm_first_token_ms is not None and first.llm_first_sentence_ms is not None
    assert 0 <= first.llm_first_token_ms <= first.llm_first_sentence_ms


async def test_text_ending_in_a_sentence_closes_with_an_empty_final_chunk() -> None:
    outcome, sink = await run(FakeReply(content="Sure. We open at eight in the morning. "))
    assert sink.texts == ["Sure. We open at eight in the morning.", ""] and sink.chunks[-1].final
    assert outcome.error is None


async def test_interruption_mid_sentence_emits_nothing_more_and_closes_the_stream() -> None:
    provider = FakeChatProvider(default=FakeReply(
        content="Once upon a time there was a baker. She baked bread every single day of the week.",
        token_delay_s=0.02))
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    sink, closed = Sink(), asyncio.Event()
    task = asyncio.create_task(stream_reply(noting_close(model.stream(REQUEST), closed), sink, apology=APOLOGY))
    await asyncio.wait_for(sink.first.wait(), 2)
    await asyncio.sleep(0.05)  # the model is now in the middle of the second sentence
    task.cancel()  # a barge-in
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.texts == ["Once upon a time there was a baker."]  # the partial sentence is dropped
    assert not any(c.final for c in sink.chunks) and closed.is_set()


async def test_no_first_token_in_time_is_an_apology() -> None:
    outcome, sink = await run(FakeReply(ttft_s=5.0), ChatLimits(first_token_timeout_s=0.1, total_timeout_s=5.0))
    assert sink.texts == [APOLOGY] and sink.chunks[0].final and sink.chunks[0].index == 0
    assert isinstance(outcome.error, ChatTimeout) and "first token" in str(outcome.error)
    timings = sink.chunks[0].timings
    assert timings is not None and timings.llm_first_token_ms is None


async def test_a_model_stalling_after_the_first_sentence_ends_in_an_apology() -> None:
    reply = FakeReply(content="Sure. We open at eight in the morning. And also", stall_after_chars=40)
    outcome, sink = await run(reply, ChatLimits(first_token_timeout_s=0.1, total_timeout_s=0.3))
    # the stalled partial sentence is never said; the apology closes the turn
    assert sink.texts == ["Sure. We open at eight in the morning.", APOLOGY]
    assert [c.final for c in sink.chunks] == [False, True]
    assert isinstance(outcome.error, ChatTimeout) and "not done" in str(outcome.error)


async def test_a_model_failing_mid_reply_ends_in_an_apology() -> None:
    outcome, sink = await run(FakeReply(content="Sure. We open at eight in the morning. See", fail_after_chars=40))
    assert sink.texts == ["Sure. We open at eight in the morning.", APOLOGY] and outcome.chunks == 2
    assert outcome.error is not None


async def test_end_call_hangs_up_after_the_final_chunk() -> None:
    outcome, sink = await run(FakeReply(content="Thanks for calling, goodbye!",
                                        tool_calls=(ToolCall("end_call", {"reason": "done"}),)))
    assert sink.texts == ["Thanks for calling, goodbye!"]
    assert sink.chunks[-1].final and sink.chunks[-1].hang_up and outcome.hang_up


async def test_end_call_without_words_says_goodbye() -> None:
    outcome, sink = await run(FakeReply(content="", tool_calls=(ToolCall("end_call"),)))
    assert sink.texts == [GOODBYE] and outcome.hang_up


async def test_other_tool_calls_do_not_hang_up() -> None:
    outcome, sink = await run(FakeReply(content="", tool_calls=(ToolCall("lookup_order"),)))
    assert sink.texts == [SAY_AGAIN] and not outcome.hang_up and not sink.chunks[0].hang_up


async def test_a_failed_emit_still_ends_the_turn_with_the_apology() -> None:
    provider = FakeChatProvider()
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    sent: list[SentChunk] = []

    async def emit(chunk: SentChunk) -> None:
        if chunk.index == 0:
            raise ConnectionError("bus down")
        sent.append(chunk)

    outcome = await stream_reply(model.stream(REQUEST), emit, apology=APOLOGY)
    assert [c.text for c in sent] == [APOLOGY] and sent[0].final and isinstance(outcome.error, ConnectionError)


async def test_a_reply_superseded_on_this_replica_stops_at_once_and_closes_with_an_empty_final_chunk() -> None:
    provider = FakeChatProvider(default=FakeReply(content="Once upon a time there was a baker. She baked",
                                                  stall_after_chars=44))  # then the model stalls mid-sentence
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    sink, stop, closed = Sink(), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(stream_reply(noting_close(model.stream(REQUEST), closed), sink, apology=APOLOGY,
                                            stop=stop))
    await asyncio.wait_for(sink.first.wait(), 2)
    stop.set()  # a newer caller turn
    outcome = await asyncio.wait_for(task, 2)  # not the model's limits: the pending read is cancelled
    assert sink.texts == ["Once upon a time there was a baker.", ""] and closed.is_set()
    assert [(c.index, c.final, c.superseded, c.hang_up) for c in sink.chunks] == [(0, False, False, False),
                                                                                (1, True, True, False)]
    assert outcome.superseded and outcome.error is None and outcome.chunks == 2


async def test_a_reply_superseded_elsewhere_is_found_at_its_next_chunk_and_closed_in_its_place() -> None:
    provider = FakeChatProvider(default=FakeReply(content="One fine sentence here. Two fine sentences here. "
                                                  "Three fine sentences here.", tool_calls=(ToolCall("end_call"),)))
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    sent: list[SentChunk] = []

    async def emit(chunk: SentChunk) -> None:
        if chunk.index == 1 and not chunk.superseded:
            raise ReplySuperseded  # the history names another turn now: nothing of this chunk went out
        sent.append(chunk)

    outcome = await stream_reply(model.stream(REQUEST), emit, apology=APOLOGY)
    assert [(c.index, c.text, c.final, c.superseded) for c in sent] == [(0, "One fine sentence here.", False, False),
                                                                       (1, "", True, True)]
    assert outcome.superseded and not outcome.hang_up and not sent[-1].hang_up
