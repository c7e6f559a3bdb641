"""Likely final transcripts: the turn so far, decoded at a pause that may end it, so that a reply can start before
the end of turn is sure and the final transcript need not decode the same words again.

Media reports a short pause in the caller's speech (``vad.speech_paused``, 64 ms of silence, before the 160 ms that
end a segment). One stt replica per pause (queue group ``stt-likely``) asks media for the turn audio
(``TurnAudioRequest(reader, likely_final=True)``: always answered, it does not take the partials reader's place),
decodes it at final priority (it waits for a worker as a final does; partial ticks give way to it) and publishes
``TranscriptPartial(likely_final=True)``: brain prepares its reply on it, media weighs whether the words sound
finished.

At end of turn (``UtteranceCaptured``) the service asks ``take`` first: when this replica decoded the same
utterance at a pause that covered all its speech (``0 < speech_end_ms <= likely.end_ms``, and the likely audio
starts no later than the utterance's), the final transcript is that text, awaited if still decoding; otherwise
(the caller went on, another replica had the pause, the decode failed) the utterance is decoded as before.

State is bounded: the last ``KEPT`` results per replica (LRU, dropped when their call ends) and at most
``MAX_IN_FLIGHT`` pauses being handled at once (more are not decoded).
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

from .engine import SpeechToText, Transcription, TranscriptionTimeout
from .partials import NoTurnAudio

log = get_logger(__name__)

LIKELY = Counter(
    "voice_stt_likely_final_total",
    "Likely final transcripts by outcome: per pause (published, empty, failed, timeout, no_turn, other_turn, "
    "late, ...) and per final that found one (reused, speech_went_on, wait_timeout)",
    ["outcome"],
)

# namespace of likely final event ids: never the id of an ordinary partial of the same utterance and audio end
_LIKELY_NS = uuid.UUID("9a4e7c21-5b3d-5f86-a1c0-2e8d6f4b7a93")
# likely final results kept per replica (a live turn needs one; a replica handles far fewer calls at once)
KEPT = 512
# pauses handled at once per replica: each holds a turn's audio (at most media's max utterance) until decoded
MAX_IN_FLIGHT = 32
# finalized utterances remembered per replica (a pause reported after its final is not decoded)
FINALIZED_KEPT = 1024

Key = tuple[str, str]  # (call id, utterance id)
# asks media for a call's turn so far as a likely final reader: the answer, or NoTurnAudio / TimeoutError
AskTurnAudio = Callable[[str], Awaitable[TurnAudio]]
Publish = Callable[[Envelope[Any]], Awaitable[Any]]
Language = Callable[[str], Awaitable[str | None]]


def likely_final_event_id(call_id: str, utterance_id: str, end_ms: int) -> str:
    """Deterministic: a pause handled twice (a redelivery) for the same audio end yields one stored event."""
    return uuid.uuid5(_LIKELY_NS, f"transcript.likely_final:{call_id}:{utterance_id}:{end_ms}").hex


@dataclass(slots=True)
class LikelyFinal:
    """One utterance's likely final: the audio decoded and its transcription (None: failed, timed out or empty)."""

    start_ms: int
    end_ms: int
    result: asyncio.Future[Transcription | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def covers(self, start_ms: int, speech_end_ms: int) -> bool:
        """The utterance's speech lies within the audio decoded (0: media did not say where the speech ended)."""
        return 0 < speech_end_ms <= self.end_ms and self.start_ms <= start_ms

    def settle(self, result: Transcription | None) -> None:
        if not self.result.done():
            self.result.set_result(result)


class LikelyFinals:
    """The likely finals of this replica: the pauses being decoded and the last results, for reuse by finals."""

    def __init__(
        self,
        stt: SpeechToText,
        *,
        ask: AskTurnAudio,
        publish: Publish,
        language: Language,
        spawn: Callable[..., asyncio.Task[Any]],
        timeout_s: float = 5.0,
        kept: int = KEPT,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.stt = stt
        self._ask, self._publish, self._language, self._spawn = ask, publish, language, spawn
        self.timeout_s = timeout_s
        self.kept = kept
        self.max_in_flight = max_in_flight
        self.results: OrderedDict[Key, LikelyFinal] = OrderedDict()
        self.in_flight: dict[asyncio.Task[Any], str] = {}  # task -> call id
        self._finalized: OrderedDict[Key, None] = OrderedDict()

    # ------------------------------------------------------------ what the service tells it
    def on_paused(self, call_id: str, tenant_id: str, turn_id: str) -> None:
        """The caller paused in turn ``turn_id``: decode the turn so far, unless too many pauses are in hand."""
        if (call_id, turn_id) in self._finalized:
            LIKELY.labels("late").inc()
            return
        if len(self.in_flight) >= self.max_in_flight:
            LIKELY.labels("too_many").inc()
            return
        task = self._spawn(self._handle(call_id, tenant_id, turn_id), name=f"stt-likely:{call_id}")
        self.in_flight[task] = call_id
        task.add_done_callback(self._task_done)

    def on_final_started(self, call_id: str, utterance_id: str) -> None:
        """The final transcript of ``utterance_id`` is being made: no likely final of it is published from now on."""
        key = (call_id, utterance_id)
        self._finalized[key] = None
        self._finalized.move_to_end(key)
        while len(self._finalized) > FINALIZED_KEPT:
            self._finalized.popitem(last=False)

    async def take(
        self, call_id: str, utterance_id: str, *, start_ms: int, speech_end_ms: int, wait_s: float
    ) -> Transcription | None:
        """The likely final of this utterance when it covered all the speech (awaited at most ``wait_s`` while still
        decoding); None when the utterance must be decoded."""
        likely = self.results.get((call_id, utterance_id))
        if likely is None:
            return None
        if not likely.covers(start_ms, speech_end_ms):
            LIKELY.labels("speech_went_on").inc()
            return None
        try:
            result = await asyncio.wait_for(asyncio.shield(likely.result), wait_s)
        except TimeoutError:
            LIKELY.labels("wait_timeout").inc()
            return None
        if result is not None:
            LIKELY.labels("reused").inc()
        return result

    def on_call_ended(self, call_id: str) -> None:
        for task, owner in list(self.in_flight.items()):
            if owner == call_id:
                task.cancel()
        for key in [k for k in self.results if k[0] == call_id]:
            self.results.pop(key).settle(None)
        for key in [k for k in self._finalized if k[0] == call_id]:
            del self._finalized[key]

    def stop(self) -> None:
        for task in list(self.in_flight):
            task.cancel()
        for likely in self.results.values():
            likely.settle(None)
        self.results.clear()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.in_flight.pop(task, None)

    # ------------------------------------------------------------ one pause
    async def _handle(self, call_id: str, tenant_id: str, turn_id: str) -> None:
        with bind_call(call_id=call_id, tenant_id=tenant_id, turn_id=turn_id):
            outcome = await self._likely_final(call_id, tenant_id, turn_id)
        LIKELY.labels(outcome).inc()

    async def _likely_final(self, call_id: str, tenant_id: str, turn_id: str) -> str:
        try:
            audio = await self._ask(call_id)
        except NoTurnAudio:
            return "call_gone"
        except TimeoutError:
            return "media_silent"
        except ValueError as e:  # not an answer media gives
            log.warning("stt_turn_audio_unreadable", error=str(e)[:200])
            return "bad_answer"
        if audio.turn_id is None:
            return "no_turn"
        if audio.turn_id != turn_id:  # the pause's turn is over (or another began): nothing to decode for it
            return "other_turn"
        if audio.taken:  # a media that does not know likely finals
            return "taken"
        if not audio.pcm:
            return "no_audio"
        key = (call_id, turn_id)
        if key in self._finalized:
            return "late"
        known = self.results.get(key)
        if known is not None and known.end_ms >= audio.end_ms:
            return "duplicate"  # this audio (or more) is decoded already
        likely = LikelyFinal(audio.start_ms, audio.end_ms)
        self._keep(key, likely)
        result: Transcription | None = None
        try:
            result, stt_ms = await self._decode(call_id, tenant_id, audio)
        except TranscriptionTimeout:
            return "timeout"
        except Exception as e:  # best effort: the final transcript is made from the utterance anyway
            log.warning("stt_likely_final_failed", error=safe_error(e, 200))
            return "failed"
        finally:
            # failed, timed out, cancelled or no words: a final waiting for it decodes the utterance itself
            likely.settle(result if result is not None and result.text else None)
        if not result.text:
            return "empty"
        if key in self._finalized:
            return "late"  # the final has started: it uses the text; publishing it now would follow the final
        if self.results.get(key) is not likely:
            return "superseded"  # a later pause of the same turn decoded more audio
        env = make(
            TranscriptPartial(
                utterance_id=turn_id, text=result.text, start_ms=audio.start_ms, end_ms=audio.end_ms, stt_ms=stt_ms,
                likely_final=True,
            ),
            tenant_id=tenant_id,
            call_id=call_id,
            turn_id=turn_id,
            epoch=audio.epoch,
            event_id=likely_final_event_id(call_id, turn_id, audio.end_ms),
        )
        try:
            await self._publish(env)
        except Exception as e:  # the final still comes
            log.warning("stt_likely_final_publish_failed", error=safe_error(e, 200))
            return "publish_failed"
        log.info("stt_likely_final", utterance_id=turn_id, audio_ms=audio.end_ms - audio.start_ms, stt_ms=stt_ms)
        return "published"

    async def _decode(self, call_id: str, tenant_id: str, audio: TurnAudio) -> tuple[Transcription, float]:
        language = await self._language(call_id)
        started = time.perf_counter()
        # partial=False: it waits for a worker as a final does (partial ticks skip a busy engine; this does not)
        result = await self.stt.transcribe(
            audio.pcm, audio.sample_rate, language, timeout_s=self.timeout_s,
            attributes={"call_id": call_id, "tenant_id": tenant_id, "turn_id": audio.turn_id or "",
                        "stt.likely_final": 1},
        )
        return result, round((time.perf_counter() - started) * 1000, 1)

    def _keep(self, key: Key, likely: LikelyFinal) -> None:
        # one replaced or dropped while decoding still settles: a final that holds it gets its text
        self.results.pop(key, None)
        self.results[key] = likely
        while len(self.results) > self.kept:
            self.results.popitem(last=False)
