"""Partial transcripts: while a caller speaks, the growing utterance is re-decoded at a bounded rate and each new
text is published as ``TranscriptPartial``; the final transcript at end of turn is made as always (``service.py``).

Where the audio comes from: media owns each call's caller audio (a ring of the last seconds) and answers the core
request ``media.rpc.<call>.turn_audio`` with the turn in progress so far (``voice_schemas.audio.TurnAudio``); it
sends nothing unless asked, so partials cost media nothing when they are off. A replica starts following a call
when media reports a speech onset (``vad.speech_started``, received in the queue group ``stt-partials``: one
replica per onset), and media serves one reader per call at a time (the others are told ``taken``).

One follower task per call, never more than one decode in flight for it:

- every ``STT_PARTIAL_INTERVAL_MS`` after the previous decode ends, unless the engine is busy (finals come first:
  the tick is skipped, nothing is fetched), ask media for the turn so far;
- decode it when the caller is speaking, or once more when a segment has just ended (its last words);
- publish when the text changed, unless the utterance's final transcript has started (ordering: a partial never
  follows the final of its utterance from this replica; readers also drop partials of finalized utterances).

A follower stops when media has no turn in progress, another replica reads the call, media no longer has the
call, the call ends, or the service stops. State is bounded: at most ``STT_PARTIAL_MAX_CALLS`` followed calls per
replica (more are not followed), per call the last text and the last few finalized utterance ids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from voice_runtime.logging import bind_call, get_logger, safe_error
from voice_schemas import Envelope, make
from voice_schemas.audio import TurnAudio
from voice_schemas.events import TranscriptPartial

from .engine import SpeechToText, TranscriptionTimeout

log = get_logger(__name__)

PARTIALS = Counter(
    "voice_stt_partials_total",
    "Partial transcript ticks by outcome (published, unchanged, busy, quiet, failed, ...)",
    ["outcome"],
)
FOLLOWED = Counter("voice_stt_partial_calls_total", "Calls followed for partials, by how following ended", ["outcome"])

# namespace of partial transcript event ids (one per utterance and audio end: a repeated decode dedupes)
_PARTIAL_NS = uuid.UUID("0b6c2d8e-3f1a-5c47-8e2d-4a9b7c1d3e50")
# finalized utterance ids remembered per followed call (a call has one turn in progress at a time)
FINALIZED_KEPT = 8
# media did not answer this many asks in a row: stop following (a new onset starts again)
MAX_SILENT_ASKS = 3


def partial_event_id(call_id: str, utterance_id: str, end_ms: int) -> str:
    return uuid.uuid5(_PARTIAL_NS, f"transcript.partial:{call_id}:{utterance_id}:{end_ms}").hex


class NoTurnAudio(Exception):
    """Media does not serve this call (it ended there, or no replica owns it)."""


# asks media for a call's turn so far: the answer, or raises NoTurnAudio / TimeoutError
AskTurnAudio = Callable[[str], Awaitable[TurnAudio]]
Publish = Callable[[Envelope[Any]], Awaitable[Any]]
Language = Callable[[str], Awaitable[str | None]]


@dataclass(slots=True)
class FollowedCall:
    call_id: str
    tenant_id: str
    task: asyncio.Task[None] | None = None
    last_text: tuple[str, str] | None = None  # (utterance id, text) last published
    finalized: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def finalize(self, utterance_id: str) -> None:
        self.finalized[utterance_id] = None
        while len(self.finalized) > FINALIZED_KEPT:
            self.finalized.popitem(last=False)


class PartialTranscripts:
    """The calls this replica follows for partials, and their follower tasks."""

    def __init__(
        self,
        stt: SpeechToText,
        *,
        ask: AskTurnAudio,
        publish: Publish,
        language: Language,
        spawn: Callable[..., asyncio.Task[Any]],
        interval_s: float = 0.5,
        max_calls: int = 64,
        timeout_s: float = 5.0,
    ) -> None:
        self.stt = stt
        self._ask, self._publish, self._language, self._spawn = ask, publish, language, spawn
        self.interval_s = interval_s
        self.max_calls = max_calls
        self.timeout_s = timeout_s
        self.calls: dict[str, FollowedCall] = {}

    # ------------------------------------------------------------ what the service tells it
    def on_speech_started(self, call_id: str, tenant_id: str) -> None:
        """A caller began speaking: follow the call unless it is followed here already or too many are."""
        if call_id in self.calls:
            return
        if len(self.calls) >= self.max_calls:
            PARTIALS.labels("too_many_calls").inc()
            return
        followed = self.calls[call_id] = FollowedCall(call_id, tenant_id)
        followed.task = self._spawn(self._follow(followed), name=f"stt-partials:{call_id}")

    def on_final_started(self, call_id: str, utterance_id: str) -> None:
        """The final transcript of ``utterance_id`` is being made: no partial of it is published from now on."""
        followed = self.calls.get(call_id)
        if followed is not None:
            followed.finalize(utterance_id)

    def on_call_ended(self, call_id: str) -> None:
        followed = self.calls.pop(call_id, None)
        if followed is not None and followed.task is not None:
            followed.task.cancel()

    def stop(self) -> None:
        for call_id in list(self.calls):
            self.on_call_ended(call_id)

    # ------------------------------------------------------------ the follower
    async def _follow(self, followed: FollowedCall) -> None:
        outcome = "cancelled"
        try:
            with bind_call(call_id=followed.call_id, tenant_id=followed.tenant_id):
                outcome = await self._loop(followed)
        finally:
            if self.calls.get(followed.call_id) is followed:
                del self.calls[followed.call_id]
            FOLLOWED.labels(outcome).inc()

    async def _loop(self, followed: FollowedCall) -> str:
        call_id = followed.call_id
        was_speaking = True  # the onset that started us: decode what there is
        last_end = -1
        silent_asks = 0
        while True:
            await asyncio.sleep(self.interval_s)
            if self.stt.busy:  # finals first: skip this tick without fetching anything
                PARTIALS.labels("busy").inc()
                continue
            try:
                audio = await self._ask(call_id)
            except NoTurnAudio:
                return "call_gone"
            except ValueError as e:  # not an answer media gives: stop rather than decode garbage
                log.warning("stt_turn_audio_unreadable", error=str(e)[:200])
                return "bad_answer"
            except TimeoutError:
                silent_asks += 1
                if silent_asks >= MAX_SILENT_ASKS:
                    return "media_silent"
                continue
            silent_asks = 0
            if audio.turn_id is None:
                return "turn_over"
            if audio.taken:
                return "taken"
            speaking, grew = audio.speaking, audio.end_ms > last_end
            if not (speaking or was_speaking) or not grew or audio.turn_id in followed.finalized:
                was_speaking = speaking
                PARTIALS.labels("quiet").inc()
                continue
            was_speaking = speaking
            last_end = audio.end_ms
            await self._decode(followed, audio)

    async def _decode(self, followed: FollowedCall, audio: TurnAudio) -> None:
        turn_id = audio.turn_id
        assert turn_id is not None
        language = await self._language(followed.call_id)
        if self.stt.busy:  # a final arrived while we asked media: it goes first
            PARTIALS.labels("busy").inc()
            return
        started = time.perf_counter()
        try:
            # no await between the busy check above and the job's submission inside transcribe()
            result = await self.stt.transcribe(
                audio.pcm,
                audio.sample_rate,
                language,
                partial=True,
                timeout_s=self.timeout_s,
                attributes={"call_id": followed.call_id, "tenant_id": followed.tenant_id, "turn_id": turn_id},
            )
        except TranscriptionTimeout:
            PARTIALS.labels("timeout").inc()
            return
        except Exception as e:  # a partial is best effort: the final transcript still comes
            PARTIALS.labels("failed").inc()
            log.warning("stt_partial_failed", error=safe_error(e, 200))
            return
        stt_ms = round((time.perf_counter() - started) * 1000, 1)
        text = result.text
        if not text or followed.last_text == (turn_id, text):
            PARTIALS.labels("unchanged").inc()
            return
        if turn_id in followed.finalized or self.calls.get(followed.call_id) is not followed:
            PARTIALS.labels("late").inc()  # the final (or the call's end) overtook this decode
            return
        followed.last_text = (turn_id, text)
        env = make(
            TranscriptPartial(
                utterance_id=turn_id, text=text, start_ms=audio.start_ms, end_ms=audio.end_ms, stt_ms=stt_ms
            ),
            tenant_id=followed.tenant_id,
            call_id=followed.call_id,
            turn_id=turn_id,
            epoch=audio.epoch,
            event_id=partial_event_id(followed.call_id, turn_id, audio.end_ms),
        )
        try:
            await self._publish(env)
        except Exception as e:  # the bus is slow or down: the next tick tries again with more audio
            PARTIALS.labels("publish_failed").inc()
            log.warning("stt_partial_publish_failed", error=safe_error(e, 200))
            return
        PARTIALS.labels("published").inc()
        log.debug("stt_partial", utterance_id=turn_id, audio_ms=audio.end_ms - audio.start_ms, stt_ms=stt_ms)
