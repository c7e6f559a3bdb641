"""The stt service: caller utterances in, final transcripts out.

- Consumes ``UtteranceCaptured`` from the shared durable consumer (replicas split the work; each
  fetches only as many utterances as it can transcribe at once, so a busy replica leaves work to idle ones).
- Transcribes in a thread pool of ``STT_CONCURRENCY`` workers, never on the event loop.
- Publishes ``TranscriptFinalized`` with an event id derived from the utterance's event id: a
  redelivered utterance yields the same id, and JetStream drops the duplicate (``Nats-Msg-Id``).
- Utterances of calls that have ended are dropped (``CallEnded`` is followed on a core subscription).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nats.aio.msg import Msg
from opentelemetry import trace
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Poison, Transient
from voice_runtime.logging import bind_call, get_logger
from voice_runtime.service import Service
from voice_schemas import CallRecord, Envelope, make, parse, subjects
from voice_schemas.events import CallEnded, TranscriptFinalized, UtteranceCaptured
from voice_schemas.streams import KV_AGENTS, KV_CALLS, KV_NUMBERS, STT_UTTERANCES

from .calls import CallLanguages, EndedCalls
from .engine import SpeechToText, Transcription
from .models import resolve_model
from .settings import SttSettings
from .whisper import DecodeOptions, WhisperSpeechToText

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.stt")

# namespace of transcript event ids derived from utterance event ids
_TRANSCRIPT_NS = uuid.UUID("6f1d3c1e-4f7a-5a53-9d1e-7c2b1e0f5a01")


def transcript_event_id(utterance_event_id: str) -> str:
    """Deterministic: the same utterance always yields the same transcript event id."""
    return uuid.uuid5(_TRANSCRIPT_NS, f"transcript.final:{utterance_event_id}").hex


def _state_dir(settings: SttSettings) -> Path:
    if settings.state_dir is not None:
        return settings.state_dir
    from voice_runtime.devstack import state_dir

    return state_dir()


def load_whisper(settings: SttSettings) -> WhisperSpeechToText:
    """Resolve, load and warm up the configured model (blocking: seconds on first start of 'base')."""
    model_dir = resolve_model(settings.stt_model, _state_dir(settings))
    threads = settings.stt_cpu_threads or max(1, (os.cpu_count() or 1) // settings.stt_concurrency)
    started = time.perf_counter()
    stt = WhisperSpeechToText(
        model_dir,
        Path(settings.stt_model).name if settings.stt_model not in ("tiny.en", "base") else settings.stt_model,
        decode=DecodeOptions(beam_size=settings.stt_beam_size),
        cpu_threads=threads,
        num_workers=settings.stt_concurrency,
        compute_type=settings.stt_compute_type,
        device=settings.stt_device,
    )
    loaded = time.perf_counter()
    stt.warm_up()
    log.info("stt_model_loaded", model=stt.model_name, path=str(model_dir), threads=threads,
             workers=settings.stt_concurrency, beam=settings.stt_beam_size,
             load_ms=round((loaded - started) * 1000), warmup_ms=round((time.perf_counter() - loaded) * 1000))
    return stt


class SttService(Service):
    name = "stt"
    owns_consumers = (STT_UTTERANCES,)

    def __init__(self, settings: SttSettings, stt: SpeechToText | None = None) -> None:
        super().__init__(settings)
        self.settings: SttSettings = settings
        self.stt: SpeechToText | None = stt
        self.ended = EndedCalls()
        self.languages = CallLanguages(self._agent_language, default=settings.stt_language or None)
        self._pool = ThreadPoolExecutor(max_workers=settings.stt_concurrency, thread_name_prefix="stt")
        self._agents: AgentDirectory | None = None

    # ------------------------------------------------------------ lifecycle
    async def on_start(self) -> None:
        assert self.bus is not None
        if self.stt is None:  # readiness waits for the model: start() returns once it is loaded
            loop = asyncio.get_running_loop()
            self.stt = await loop.run_in_executor(self._pool, load_whisper, self.settings)
        if KV_AGENTS.bucket in self.kv and KV_NUMBERS.bucket in self.kv:
            self._agents = AgentDirectory(self.kv[KV_AGENTS.bucket], self.kv[KV_NUMBERS.bucket], self.settings)
        await self.subscribe(CallEnded.subject_pattern(), self._on_call_ended)
        # fetch no more utterances than this replica transcribes at once, so others can take the rest
        consumer = dataclasses.replace(STT_UTTERANCES, concurrency=self.settings.stt_concurrency)
        await self.consume(consumer, self.on_utterance)

    async def stop(self) -> None:
        await super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def check_ready(self) -> bool:
        return self.stt is not None

    # ------------------------------------------------------------ call facts
    async def _on_call_ended(self, msg: Msg) -> None:
        try:
            env = parse(msg.data)
        except Exception:  # not ours to judge: the durable consumers dead-letter it
            return
        if isinstance(env.data, CallEnded):
            self.ended.add(env.call_id)
            self.languages.forget(env.call_id)

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

    # ------------------------------------------------------------ the handler
    async def on_utterance(self, env: Envelope[UtteranceCaptured], msg: Msg) -> None:
        received = time.perf_counter()
        u = env.data
        if not isinstance(u, UtteranceCaptured):
            raise Poison(f"unexpected event {env.type} on {STT_UTTERANCES.durable}")
        with bind_call(call_id=env.call_id, tenant_id=env.tenant_id, turn_id=env.turn_id):
            if env.call_id in self.ended:
                log.info("stt_utterance_dropped", reason="call_ended", utterance_id=u.utterance_id)
                return
            try:
                pcm = base64.b64decode(u.audio_b64, validate=True)
            except (binascii.Error, ValueError) as e:
                metrics.ERRORS.labels(self.name, "bad_audio").inc()
                raise Poison(f"audio_b64 is not base64: {e}") from e
            language = await self.languages.get(env.call_id)
            result, stt_s = await self._transcribe(env, pcm, u.sample_rate, language)
            out = make(
                TranscriptFinalized(
                    utterance_id=u.utterance_id,
                    text=result.text,
                    language=result.language,
                    start_ms=u.start_ms,
                    end_ms=u.end_ms,
                    stt_ms=round(stt_s * 1000, 1),
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
                     audio_ms=round(result.duration_s * 1000), stt_ms=out.data.stt_ms,
                     language=result.language, delivery=msg.metadata.num_delivered if msg.metadata else 1)

    async def _transcribe(
        self, env: Envelope[UtteranceCaptured], pcm: bytes, sample_rate: int, language: str | None
    ) -> tuple[Transcription, float]:
        stt = self.stt
        if stt is None:
            raise Transient("model not loaded yet")
        loop = asyncio.get_running_loop()
        with _tracer.start_as_current_span(
            "stt transcribe",
            attributes={"call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": env.turn_id or "",
                        "stt.model": stt.model_name, "stt.audio_ms": len(pcm) * 1000 // (2 * sample_rate or 1)},
        ) as span:
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._pool, stt.transcribe, pcm, sample_rate, language)
            except Exception as e:
                metrics.ERRORS.labels(self.name, "inference").inc()
                span.record_exception(e)
                raise
            elapsed = time.perf_counter() - started
            span.set_attribute("stt.inference_ms", round(elapsed * 1000, 1))
            span.set_attribute("stt.language", result.language or "")
        metrics.INFERENCE_SECONDS.labels(self.name, stt.model_name).observe(elapsed)
        return result, elapsed
