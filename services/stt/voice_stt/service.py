"""The stt service: caller utterances in, final transcripts out.

- Consumes ``UtteranceCaptured`` from the shared durable consumer (replicas split the work; each
  fetches only as many utterances as it can transcribe at once, so a busy replica leaves work to idle ones).
- Transcribes with the engine ``STT_ENGINE`` names (``engines/``), which runs off the event loop.
- Publishes ``TranscriptFinalized`` with an event id derived from the utterance's event id: a
  redelivered utterance yields the same id, and JetStream drops the duplicate (``Nats-Msg-Id``).
- Utterances of calls that have ended are dropped (``CallEnded`` is followed on a core subscription).
- While a caller speaks, publishes ``TranscriptPartial`` from re-decodes of the turn so far, which media hands
  out on request (``partials.py``; ``STT_PARTIALS``, on by default for engines whose cost follows the audio).
- At a pause in the caller's speech (``vad.speech_paused``), decodes the turn so far at once and publishes it as a
  likely final ``TranscriptPartial``; the final transcript reuses that text when the caller said no more
  (``likely_final.py``; ``STT_LIKELY_FINAL``, on by default).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
import uuid

from opentelemetry import trace
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import NoResponders, Poison, Transient
from voice_runtime.handlers import EnvelopeHandler, Handlers, envelope_callback
from voice_runtime.logging import bind_call, get_logger
from voice_runtime.ports import Unsubscribable
from voice_runtime.service import Service
from voice_schemas import CallRecord, Envelope, make, subjects
from voice_schemas.audio import TurnAudio, TurnAudioRequest
from voice_schemas.events import (
    CallEnded,
    SpeechPaused,
    SpeechStarted,
    TranscriptFinalized,
    TranscriptPartial,
    UtteranceCaptured,
)
from voice_schemas.streams import KV_AGENTS, KV_CALLS, KV_NUMBERS, STT_UTTERANCES, ConsumerDef

from .calls import CallLanguages, EndedCalls
from .engine import SpeechToText, Transcription, TranscriptionTimeout
from .engines import ENGINES
from .likely_final import LikelyFinals
from .partials import NoTurnAudio, PartialTranscripts
from .settings import SttSettings

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.stt")

# the queue group in which one stt replica receives each speech onset (and may follow that call for partials)
PARTIALS_QUEUE = "stt-partials"
# the queue group in which one stt replica receives each pause in a caller's speech (and decodes the likely final)
LIKELY_QUEUE = "stt-likely"
# namespace of transcript event ids derived from utterance event ids
_TRANSCRIPT_NS = uuid.UUID("6f1d3c1e-4f7a-5a53-9d1e-7c2b1e0f5a01")


def transcript_event_id(utterance_event_id: str) -> str:
    """Deterministic: the same utterance always yields the same transcript event id."""
    return uuid.uuid5(_TRANSCRIPT_NS, f"transcript.final:{utterance_event_id}").hex


class SttService(Service):
    name = "stt"
    utterances = Handlers(STT_UTTERANCES)

    def __init__(self, settings: SttSettings, stt: SpeechToText | None = None) -> None:
        super().__init__(settings)
        self.settings: SttSettings = settings
        self.stt = stt if stt is not None else ENGINES.get(settings.stt_engine)(settings)
        self._owns_engine = stt is None  # an engine passed in belongs to the caller
        self.ended = EndedCalls()
        self.languages = CallLanguages(self._agent_language, default=settings.stt_language or None)
        self._agents: AgentDirectory | None = None
        self.reader = f"stt-{uuid.uuid4().hex[:16]}"  # this replica, as media's turn audio reader
        self.partials: PartialTranscripts | None = None
        if settings.stt_partials == "on" or (settings.stt_partials == "auto" and self.stt.partials_by_default):
            self.partials = PartialTranscripts(
                self.stt, ask=self._ask_turn_audio, publish=self._publish_partial, language=self.languages.get,
                spawn=self.spawn, interval_s=settings.stt_partial_interval_ms / 1000,
                max_calls=settings.stt_partial_max_calls, timeout_s=settings.stt_partial_timeout_s,
            )
        self.likely: LikelyFinals | None = None
        if settings.stt_likely_final == "on":
            self.likely = LikelyFinals(
                self.stt, ask=self._ask_likely_audio, publish=self._publish_partial, language=self.languages.get,
                spawn=self.spawn, timeout_s=settings.stt_partial_timeout_s,
            )
        self._partial_subs: list[Unsubscribable] = []

    # ------------------------------------------------------------ lifecycle
    def consumer_for(self, handlers: Handlers) -> ConsumerDef:
        # fetch no more utterances than this replica transcribes at once, so others can take the rest
        return handlers.consumer(concurrency=self.settings.stt_concurrency)

    async def on_start(self) -> None:
        await self.stt.start()  # readiness waits for the model: start() returns once it is loaded
        if KV_AGENTS.bucket in self.kv and KV_NUMBERS.bucket in self.kv:
            self._agents = AgentDirectory(self.kv[KV_AGENTS.bucket], self.kv[KV_NUMBERS.bucket], self.settings)
        await self.on_events(CallEnded.subject_pattern(), self._on_call_ended)
        if self.partials is not None:
            await self._subscribe(SpeechStarted.subject_pattern(), self._on_speech_started, queue=PARTIALS_QUEUE)
        if self.likely is not None:
            await self._subscribe(SpeechPaused.subject_pattern(), self._on_speech_paused, queue=LIKELY_QUEUE)
        if self.partials is not None or self.likely is not None:
            # finals made by any replica: nothing of that utterance is published here from now on
            await self._subscribe(TranscriptFinalized.subject_pattern(), self._on_transcript_final)
        log.info("stt_partials", enabled=self.partials is not None, setting=self.settings.stt_partials,
                 interval_ms=self.settings.stt_partial_interval_ms, likely_final=self.likely is not None)

    async def _subscribe(self, subject: str, handler: EnvelopeHandler, *, queue: str = "") -> None:
        assert self.bus is not None
        self._partial_subs.append(
            await self.bus.subscribe(subject, envelope_callback(self.name, subject, handler), queue=queue))

    async def on_stop(self) -> None:
        for sub in self._partial_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._partial_subs.clear()
        if self.partials is not None:
            self.partials.stop()
        if self.likely is not None:
            self.likely.stop()

    async def stop(self) -> None:
        await super().stop()
        if self._owns_engine:
            self.stt.close()

    async def check_ready(self) -> bool:
        return self.stt.loaded

    # ------------------------------------------------------------ call facts
    async def _on_call_ended(self, env: Envelope[CallEnded]) -> None:
        self.ended.add(env.call_id)
        self.languages.forget(env.call_id)
        if self.partials is not None:
            self.partials.on_call_ended(env.call_id)
        if self.likely is not None:
            self.likely.on_call_ended(env.call_id)

    async def _agent_language(self, call_id: str) -> str | None:
        calls_kv = self.kv.get(KV_CALLS.bucket)
        if calls_kv is None or self._agents is None:
            return None
        timeout = self.settings.stt_language_lookup_timeout_s
        entry = await asyncio.wait_for(calls_kv.get(subjects.call_key(call_id)), timeout)
        if not entry.value:
            return None
        record = CallRecord.model_validate_json(entry.value)
        agent = await asyncio.wait_for(self._agents.version(record.agent_id, record.agent_version), timeout)
        if agent is None:
            return None
        return agent.stt.language or agent.language

    # ------------------------------------------------------------ partial transcripts
    async def _on_speech_started(self, env: Envelope[SpeechStarted]) -> None:
        if self.partials is not None and env.call_id not in self.ended and not self.stopping:
            self.partials.on_speech_started(env.call_id, env.tenant_id)

    async def _on_speech_paused(self, env: Envelope[SpeechPaused]) -> None:
        if self.likely is not None and env.call_id not in self.ended and not self.stopping and env.turn_id:
            self.likely.on_paused(env.call_id, env.tenant_id, env.turn_id)

    async def _on_transcript_final(self, env: Envelope[TranscriptFinalized]) -> None:
        if self.partials is not None:
            self.partials.on_final_started(env.call_id, env.data.utterance_id)
        if self.likely is not None:
            self.likely.on_final_started(env.call_id, env.data.utterance_id)

    async def _ask_turn_audio(self, call_id: str, *, likely_final: bool = False) -> TurnAudio:
        if self.bus is None:
            raise NoTurnAudio("not connected to the bus")
        try:
            raw = await self.bus.request(subjects.media_call_rpc(call_id, subjects.TURN_AUDIO),
                                         TurnAudioRequest(self.reader, likely_final=likely_final).to_bytes(),
                                         timeout=self.settings.stt_partial_ask_timeout_s)
        except NoResponders as e:
            raise NoTurnAudio(str(e)) from e
        return TurnAudio.from_bytes(raw)

    async def _ask_likely_audio(self, call_id: str) -> TurnAudio:
        return await self._ask_turn_audio(call_id, likely_final=True)

    async def _publish_partial(self, env: Envelope[TranscriptPartial]) -> None:
        if self.bus is None:
            raise RuntimeError("not connected to the bus")
        await self.bus.publish(env)

    # ------------------------------------------------------------ the handler
    @utterances.on(UtteranceCaptured)
    async def on_utterance(self, env: Envelope[UtteranceCaptured]) -> None:
        received = time.perf_counter()
        u = env.data
        with bind_call(call_id=env.call_id, tenant_id=env.tenant_id, turn_id=env.turn_id):
            if self.partials is not None:  # no partial of this utterance is published from now on
                self.partials.on_final_started(env.call_id, u.utterance_id)
            if self.likely is not None:
                self.likely.on_final_started(env.call_id, u.utterance_id)
            if env.call_id in self.ended:
                log.info("stt_utterance_dropped", reason="call_ended", utterance_id=u.utterance_id)
                return
            try:
                pcm = base64.b64decode(u.audio_b64, validate=True)
            except (binascii.Error, ValueError) as e:
                metrics.ERRORS.labels(self.name, "bad_audio").inc()
                raise Poison(f"audio_b64 is not base64: {e}") from e
            started, started_ns = time.perf_counter(), time.time_ns()
            result = await self._likely_text(env)
            waited = time.perf_counter() - started  # reused: stt_ms is this wait alone
            reused = result is not None
            if reused:  # the turn's trace still shows its stt stage: the wait for the likely final
                _tracer.start_span("stt transcribe", start_time=started_ns, attributes={
                    "call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": env.turn_id or "",
                    "stt.model": self.stt.model_name, "stt.likely_final_reused": True}).end()
            if result is None:
                language = await self.languages.get(env.call_id)
                started = time.perf_counter()
                try:
                    result = await self.stt.transcribe(pcm, u.sample_rate, language, attributes={
                        "call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": env.turn_id or ""})
                except TranscriptionTimeout as e:  # a busy or stuck engine: another delivery may find it free
                    raise Transient(str(e)) from e
                waited += time.perf_counter() - started
            stt_ms = round(waited * 1000, 1)
            out = make(
                TranscriptFinalized(
                    utterance_id=u.utterance_id,
                    text=result.text,
                    language=result.language,
                    start_ms=u.start_ms,
                    end_ms=u.end_ms,
                    stt_ms=stt_ms,
                    end_of_turn_ms=u.end_of_turn_ms,
                    speech_end_wall_ms=u.speech_end_wall_ms,
                ),
                tenant_id=env.tenant_id,
                call_id=env.call_id,
                turn_id=env.turn_id,
                epoch=env.epoch,
                seq=env.seq,
                event_id=transcript_event_id(env.id),
            )
            if self.bus is None:
                raise Transient("not connected to the bus")
            try:
                await self.bus.publish(out)
            except Exception as e:  # the bus is down or slow: retry the utterance later
                metrics.ERRORS.labels(self.name, "publish").inc()
                raise Transient(f"publishing the transcript failed: {e!r}") from e
            metrics.STAGE_SECONDS.labels(self.name, "stt").observe(time.perf_counter() - received)
            log.info("stt_transcribed", utterance_id=u.utterance_id, text=result.text,
                     audio_ms=round(result.duration_s * 1000), stt_ms=stt_ms, language=result.language,
                     likely_final_reused=reused)

    async def _likely_text(self, env: Envelope[UtteranceCaptured]) -> Transcription | None:
        """This replica's likely final of the utterance when it covered all the speech, else None (decode)."""
        if self.likely is None:
            return None
        u = env.data
        return await self.likely.take(env.call_id, u.utterance_id, start_ms=u.start_ms,
                                      speech_end_ms=u.speech_end_ms, wait_s=self.settings.stt_partial_timeout_s)
