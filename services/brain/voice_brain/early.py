"""Replies begun early: the LLM request of a caller turn started on its likely-final transcript.

At a short pause in the caller's speech stt decodes the turn so far (``transcript.partial`` with
``likely_final``). One brain replica (queue group) builds the prompt exactly as the turn's reply would, with those
words as the caller's turn, and starts the completion into a buffer: nothing is spoken, published or stored. When
the turn's final transcript arrives, ``_reply`` asks for its first completion; if an early one was begun for that
turn with the very same request (messages, model, parameters: any difference, e.g. the caller went on and the final
words differ, is a miss), the reply reads the buffered deltas and then the live stream, so the time the model spent
while end of turn was still being decided is saved. Otherwise the early completion is cancelled (its stream closed,
so the LLM server stops generating) and the reply asks the model as always.

Bounds: one early completion per call (a newer one replaces it), ``max_calls`` in all, each dropped
``ttl_s`` after it began unless taken, ``MAX_DELTAS`` buffered (a longer one is given up). A replica only takes
its own early completions: with several replicas the final may reach another one, which then asks the model
itself (nothing is lost, the head start is).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from prometheus_client import Counter
from voice_runtime.logging import get_logger, safe_error

from .chat import ChatRequest, Delta

log = get_logger(__name__)

EARLY = Counter("voice_brain_early_replies_total",
                "Replies begun on a likely-final transcript, by outcome (started, taken, missed, replaced, expired, "
                "failed, skipped_*)", ["outcome"])
MAX_DELTAS = 4096


def _now_ms() -> float:
    return time.time() * 1000


@dataclass(eq=False)
class EarlyCompletion:
    """One early completion: the request it was begun with and what the model has streamed so far."""

    call_id: str
    turn_id: str
    model_id: tuple[str, str]  # (endpoint base url, model name)
    request: ChatRequest
    started_wall_ms: float = field(default_factory=_now_ms)
    deltas: list[Delta] = field(default_factory=list)
    first_text_wall_ms: float | None = None
    done: bool = False
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None
    _more: asyncio.Event = field(default_factory=asyncio.Event)

    async def fill(self, stream: AsyncIterator[Delta]) -> None:
        """Read the model's stream into the buffer (the task ``EarlyReplies.begin`` starts). No span is current
        while it reads: the turn's ``brain llm`` span does not exist yet (the reply that takes it marks it)."""
        token = otel_context.attach(otel_context.Context())
        try:
            async for d in stream:
                if len(self.deltas) >= MAX_DELTAS:
                    raise RuntimeError("early completion longer than the buffer")
                if d.text and self.first_text_wall_ms is None:
                    self.first_text_wall_ms = _now_ms()
                self.deltas.append(d)
                self._more.set()
        except asyncio.CancelledError:
            self.error = asyncio.CancelledError()
            raise
        except Exception as e:  # replayed to the reply that takes it, which apologizes as for any model failure
            self.error = e
        finally:
            otel_context.detach(token)
            self.done = True
            self._more.set()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def replay(self, on_first_text: Callable[[float], None] | None = None) -> AsyncIterator[Delta]:
        """The buffered deltas, then the live ones as they come; closing it early cancels the completion.
        ``on_first_text`` is told when (wall ms) the model produced its first text, as that text is replayed."""
        i = 0
        try:
            while True:
                if i < len(self.deltas):
                    i += 1
                    d = self.deltas[i - 1]
                    if d.text and on_first_text is not None and self.first_text_wall_ms is not None:
                        on_first_text(self.first_text_wall_ms)
                        on_first_text = None
                    yield d
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                self._more.clear()
                if i < len(self.deltas) or self.done:
                    continue
                await self._more.wait()
        finally:
            self.cancel()

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class EarlyReplies:
    """The early completions of this replica, one per call at most."""

    def __init__(self, *, max_calls: int = 256, ttl_s: float = 8.0,
                 spawn: Callable[..., asyncio.Task[Any]] = asyncio.create_task) -> None:
        self.max_calls = max_calls
        self.ttl_s = ttl_s
        self._spawn = spawn
        self.calls: dict[str, EarlyCompletion] = {}

    def begin(self, call_id: str, turn_id: str, model_id: tuple[str, str], request: ChatRequest,
              stream: Callable[[], AsyncIterator[Delta]]) -> EarlyCompletion | None:
        """Start the completion of ``request`` for ``turn_id`` (replacing the call's earlier one); None when too
        many calls have one."""
        self.drop(call_id, "replaced")
        self._expire()
        if len(self.calls) >= self.max_calls:
            EARLY.labels("skipped_too_many").inc()
            return None
        early = EarlyCompletion(call_id, turn_id, model_id, request)
        early.task = self._spawn(early.fill(stream()), name=f"brain-early:{call_id}")
        self.calls[call_id] = early
        EARLY.labels("started").inc()
        return early

    def take(self, call_id: str, turn_id: str, model_id: tuple[str, str], request: ChatRequest,
             ) -> EarlyCompletion | None:
        """The call's early completion when it was begun for this turn with this very request (then it belongs to
        the caller, who reads ``replay()``); one begun for this turn with another request (the final words or
        the history differ) is cancelled. One begun for another turn (a newer one, while this turn's tools run)
        is left alone."""
        early = self.calls.get(call_id)
        if early is None or early.turn_id != turn_id:
            return None
        del self.calls[call_id]
        fresh = _now_ms() - early.started_wall_ms <= self.ttl_s * 1000
        if (early.model_id == model_id and early.request == request and fresh
                and not isinstance(early.error, asyncio.CancelledError)):
            EARLY.labels("taken").inc()
            return early
        early.cancel()
        EARLY.labels("missed" if fresh else "expired").inc()
        log.info("early_reply_missed", call_id=call_id, turn_id=turn_id, expired=not fresh)
        return None

    def drop(self, call_id: str, outcome: str = "dropped", turn_id: str | None = None) -> None:
        """Cancel the call's early completion (of ``turn_id`` only, when given)."""
        early = self.calls.get(call_id)
        if early is None or (turn_id is not None and early.turn_id != turn_id):
            return
        del self.calls[call_id]
        early.cancel()
        EARLY.labels(outcome).inc()

    def _expire(self) -> None:
        limit = _now_ms() - self.ttl_s * 1000
        for call_id in [c for c, e in self.calls.items() if e.started_wall_ms < limit]:
            self.drop(call_id, "expired")

    def stop(self) -> None:
        for call_id in list(self.calls):
            self.drop(call_id, "stopped")


def log_failure(call_id: str, error: BaseException) -> None:
    EARLY.labels("failed").inc()
    log.warning("early_reply_failed", call_id=call_id, error=safe_error(error, 200))
