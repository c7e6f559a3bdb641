"""Streaming one reply: model deltas in, complete sentences out as soon as each is complete.

``stream_reply`` takes the model's delta stream (a ``ChatModel.stream``, which enforces the first-token and
total limits) and an ``emit`` callable (the service stores the chunk in history and publishes it). It owns no
bus and no model, so interruption, limits, tool calls and the apology are unit-testable with a fake model.

Rules:

- Each sentence goes out the moment the chunker completes it (``final=False``); what is left when the stream
  ends goes out as the final chunk, which may be empty (tts then closes the turn with one silent frame).
- A reply with no text at all says ``GOODBYE`` after an ``end_call`` tool call, nothing after other tool calls
  (pressing keys in a phone menu is not a turn to be asked to repeat), ``SAY_AGAIN`` otherwise.
- Any failure (the model's, a limit, a failed emit) ends the reply with ``apology`` as the final chunk.
- Superseded (a newer caller turn): ``stop`` set (on the replica streaming the reply: at once, the pending read
  of the model is cancelled) or ``emit`` raising ``ReplySuperseded`` (found in the call's history at the next
  chunk, whichever replica took the newer turn) ends the reading and closes the reply with an empty final chunk
  marked ``superseded`` at the next index, so downstream playout closes the turn. No hang-up.
- Made for the ear: with ``first_clause_chars`` the first chunk may be a clause (``chunking.py``); with
  ``max_sentences`` the reply ends once that many of the model's sentences went out (the completion is closed, a
  partial sentence after them dropped, no further tool round), then closes with an empty final chunk.
- Cancellation (a barge-in) emits nothing more: the partial sentence is dropped (the new epoch drops the rest).
- ``end_call`` sets ``hang_up`` on the final chunk and on the outcome; the service then hangs up after playout.
- Other tool calls (``tools``, when given): once the model's completion ends with them, what it said so far goes
  out as a non-final chunk, then ``tools`` runs them (it may ``say`` a line meanwhile: a filler, an approval's
  holding line) and returns the next completion (the model sees the results) or None to end the reply there.
  At most ``max_tool_rounds`` rounds; a model that keeps calling tools after that ends with what it said.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .chat import Delta, ToolCall
from .chunking import MIN_CHARS, SentenceChunker
from .conversation import END_CALL, ReplyTimings, SentChunk, span_ms

GOODBYE = "Goodbye."
SAY_AGAIN = "Sorry, could you say that again?"

Emit = Callable[[SentChunk], Awaitable[None]]
Clock = Callable[[], float]  # wall-clock milliseconds
Say = Callable[[str], Awaitable[None]]  # a non-final chunk, in the reply's order
# the tool calls of one completion -> the next completion, or None: the reply ends (e.g. waiting for an approval)
RunTools = Callable[[tuple[ToolCall, ...], Say], Awaitable[AsyncIterator[Delta] | None]]
MAX_TOOL_ROUNDS = 3


def wall_ms() -> float:
    return time.time() * 1000


class ReplySuperseded(Exception):
    """Raised by ``emit`` when the reply's turn is no longer the call's latest (nothing of the chunk went out)."""


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    chunks: int  # chunks emitted, the final one included
    hang_up: bool
    error: Exception | None = None  # why the reply ended in the apology
    superseded: bool = False  # closed early by a newer caller turn


async def _next(deltas: AsyncIterator[Delta], halt: asyncio.Future[Any] | None) -> Delta | None:
    """The next delta, None at the end; ``ReplySuperseded`` as soon as ``halt`` is done (the read is cancelled and
    unwound first, so the stream can be closed)."""
    if halt is None:
        return await anext(deltas, None)
    if halt.done():
        raise ReplySuperseded

    async def read() -> Delta | None:
        return await anext(deltas, None)

    reading = asyncio.ensure_future(read())
    try:
        await asyncio.wait({reading, halt}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not reading.done():
            reading.cancel()
            await asyncio.wait({reading})
    if halt.done():
        if not reading.cancelled():
            reading.exception()  # retrieved: being superseded wins over a model failure at the same moment
        raise ReplySuperseded
    return reading.result()


async def stream_reply(deltas: AsyncIterator[Delta], emit: Emit, *, apology: str, clock: Clock = wall_ms,
                       min_sentence_chars: int | None = None, stop: asyncio.Event | None = None,
                       tools: RunTools | None = None, max_tool_rounds: int = MAX_TOOL_ROUNDS,
                       max_sentences: int | None = None, first_clause_chars: int = 0) -> ReplyOutcome:
    """Turn ``deltas`` into emitted chunks (see the module rules). Closes ``deltas`` when done or cancelled."""
    chunker = SentenceChunker(MIN_CHARS if min_sentence_chars is None else min_sentence_chars, first_clause_chars)
    started = clock()
    sentences = 0  # the model's sentences sent (a first clause is not one; tool lines are not counted)

    def capped() -> bool:
        return max_sentences is not None and sentences >= max_sentences
    first_token: float | None = None
    index = 0
    hang_up = False
    error: Exception | None = None

    async def send(text: str, final: bool, superseded: bool = False) -> None:
        nonlocal index
        i = index
        index += 1
        timings = None
        if i == 0:
            now = clock()
            timings = ReplyTimings(llm_start_wall_ms=started, llm_first_token_ms=span_ms(started, first_token),
                                   llm_first_sentence_ms=span_ms(started, now), first_sentence_wall_ms=now)
        try:
            await emit(SentChunk(index=i, text=text, final=final, hang_up=final and hang_up and not superseded,
                                 timings=timings, superseded=superseded))
        except ReplySuperseded:
            index = i  # nothing of it went out: the closing chunk takes its index
            raise

    async def read(completion: AsyncIterator[Delta]) -> list[ToolCall]:
        """One completion's text out as sentences; its tool calls (``end_call`` taken as ``hang_up``) back."""
        nonlocal first_token, hang_up, sentences
        calls: list[ToolCall] = []
        halt: asyncio.Future[Any] | None = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while (delta := await _next(completion, halt)) is not None:
                if delta.text and first_token is None:
                    first_token = clock()
                for call in delta.tool_calls:
                    if call.name == END_CALL:
                        hang_up = True
                    else:
                        calls.append(call)
                for text, ends_sentence in chunker.push_chunks(delta.text):
                    if capped():
                        break
                    await send(text, final=False)
                    sentences += ends_sentence
                if capped():
                    break  # the rest of the completion is not read (nor generated: the stream is closed)
        finally:
            if halt is not None:
                halt.cancel()
            aclose = getattr(completion, "aclose", None)
            if aclose is not None:
                await aclose()
        if stop is not None and stop.is_set():
            raise ReplySuperseded
        return calls

    async def say(text: str) -> None:
        if stop is not None and stop.is_set():
            raise ReplySuperseded
        if text.strip():
            await send(text.strip(), final=False)

    async def speak() -> None:
        completion: AsyncIterator[Delta] | None = deltas
        rounds = 0
        while completion is not None:
            calls = await read(completion)
            completion = None
            if capped():
                chunker.flush()  # past the cap: the partial sentence is dropped, no further tool round
                break
            if calls and tools is not None and rounds < max_tool_rounds:
                rounds += 1
                rest = chunker.flush()  # what the model said before calling: spoken while the tools run
                if rest:
                    await send(rest, final=False)
                completion = await tools(tuple(calls), say)
        rest = chunker.flush()
        if not rest and index == 0:  # (after tools that ran silently, e.g. keys pressed in a phone menu: nothing)
            rest = GOODBYE if hang_up else "" if rounds else SAY_AGAIN
        await send(rest, final=True)

    try:
        try:
            await speak()
        except ReplySuperseded:
            raise
        except Exception as e:
            error = e
            await send(apology, final=True)
    except ReplySuperseded:
        await send("", final=True, superseded=True)
        return ReplyOutcome(chunks=index, hang_up=False, error=error, superseded=True)
    return ReplyOutcome(chunks=index, hang_up=hang_up, error=error)
