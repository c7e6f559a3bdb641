"""The tts service: reply sentences in, 20 ms agent audio frames out on ``call.<id>.audio.out``.

- Consumes ``ReplyChunk`` from the shared durable consumer; chunks of one call are spoken one at a time,
  in the order they were fetched, with a per-call increasing frame ``seq``.
- Synthesis runs in the engine's thread pool (``TTS_ENGINE``, ``engines/``) one sentence per job (calls take
  turns sentence by sentence); frames are published from the event loop as each sentence is resampled, before
  the rest of the chunk exists.
- Barge-in: ``control.barge_in`` (core subscription; the envelope epoch is the new epoch) and any chunk of
  a newer epoch move the call's epoch; stale chunks are skipped and one being spoken stops between frames.
- ``CallEnded`` frees the call's state; late chunks for it are dropped.
- A text-only call (a chat; ``ReplyChunk.text_only``) is never synthesised and gets no per-call state here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from opentelemetry import trace
from prometheus_client import Counter
from voice_runtime import metrics, telemetry
from voice_runtime.handlers import Handlers
from voice_runtime.logging import bind_call, get_logger
from voice_runtime.service import Service
from voice_schemas import Envelope, subjects
from voice_schemas.audio import AudioFrame, frames_in
from voice_schemas.events import BargeIn, CallEnded, ReplyChunk
from voice_schemas.streams import TTS_REPLIES

from .calls import CallAudio, CallAudioRegistry
from .engine import TextToSpeech
from .engines import ENGINES
from .settings import TtsSettings
from .speaker import ChunkJob, SpeakResult, speak_chunk

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.tts")
SKIPPED = Counter("voice_tts_chunks_skipped_total", "Reply chunks not synthesised, by reason", ["reason"])


class TtsService(Service):
    name = "tts"
    replies = Handlers(TTS_REPLIES)

    def __init__(self, settings: TtsSettings, engine: TextToSpeech | None = None) -> None:
        super().__init__(settings)
        self.settings: TtsSettings = settings
        self.engine = engine if engine is not None else ENGINES.get(settings.tts_engine)(settings)
        self._owns_engine = engine is None  # an engine passed in belongs to the caller
        self.calls = CallAudioRegistry()

    # ------------------------------------------------------------ lifecycle
    async def on_start(self) -> None:
        await self.engine.start()  # readiness waits for the default voice
        await self.on_events(BargeIn.subject_pattern(), self._on_barge_in)
        await self.on_events(CallEnded.subject_pattern(), self._on_call_ended)
        self.spawn(self._sweep_idle_calls(), name="tts:sweep")

    async def stop(self) -> None:
        await super().stop()
        if self._owns_engine:
            self.engine.close()

    async def check_ready(self) -> bool:
        return self.engine.loaded

    async def _sweep_idle_calls(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.settings.tts_call_idle_s))
            if self.calls.sweep(self.settings.tts_call_idle_s):
                metrics.ACTIVE_CALLS.labels(self.name).set(len(self.calls))

    # ------------------------------------------------------------ control (core subscriptions)
    async def _on_barge_in(self, env: Envelope[BargeIn]) -> None:
        self.calls.barge_in(env.call_id, env.epoch)
        log.info("tts_barge_in", call_id=env.call_id, epoch=env.epoch)
        metrics.ACTIVE_CALLS.labels(self.name).set(len(self.calls))

    async def _on_call_ended(self, env: Envelope[CallEnded]) -> None:
        self.calls.end(env.call_id)
        metrics.ACTIVE_CALLS.labels(self.name).set(len(self.calls))

    # ------------------------------------------------------------ the handler
    @replies.on(ReplyChunk)
    async def on_reply_chunk(self, env: Envelope[ReplyChunk]) -> None:
        received = time.perf_counter()
        chunk = env.data
        with bind_call(call_id=env.call_id, tenant_id=env.tenant_id, turn_id=env.turn_id):
            if chunk.text_only:  # a chat: its text is the reply, nobody listens
                SKIPPED.labels("text_only").inc()
                return
            call = self.calls.get(env.call_id)
            if call is None:
                log.info("tts_chunk_dropped", reason="call_ended", chunk=chunk.index)
                return
            metrics.ACTIVE_CALLS.labels(self.name).set(len(self.calls))
            call.observe_epoch(env.epoch)  # a chunk of a newer epoch cancels older ones still speaking
            async with call.lock:  # FIFO: chunks of a call are spoken in the order they were fetched
                if call.is_stale(env.epoch):
                    log.info("tts_chunk_dropped", reason="stale_epoch", chunk=chunk.index, epoch=env.epoch,
                             call_epoch=call.epoch)
                    return
                if env.id in call.spoken:
                    log.info("tts_chunk_dropped", reason="duplicate", chunk=chunk.index)
                    return
                result = await self._speak(env, chunk, call, received)
                if not result.cancelled:
                    call.mark_spoken(env.id)

    async def _speak(
        self, env: Envelope[ReplyChunk], chunk: ReplyChunk, call: CallAudio, received: float
    ) -> SpeakResult:
        assert self.bus is not None
        bus = self.bus
        subject = subjects.audio_out(env.call_id)
        tts = await self.engine.voice(chunk.voice)
        frames_out = metrics.AUDIO_FRAMES.labels(self.name, "out", "published")

        sent = 0

        async def publish(frame: AudioFrame) -> None:
            nonlocal sent
            if sent == 0 and chunk.index == 0:  # the reply's first frame says this stage's time to it
                frame = dataclasses.replace(frame, synth_ms=round((time.perf_counter() - received) * 1000, 1))
            headers = frame.headers()
            if sent == 0:  # the chunk's first frame carries the turn's trace on to ingress
                telemetry.inject(headers)
            sent += 1
            await bus.publish_nowait(subject, frame.pcm, headers)
            frames_out.inc(frames_in(frame.pcm))

        job = ChunkJob(turn_id=env.turn_id, epoch=env.epoch, index=chunk.index, text=chunk.text, final=chunk.final,
                       split_first_clause=chunk.index == 0 and self.settings.tts_split_first_clause)
        with _tracer.start_as_current_span(
            "tts synthesize",
            attributes={"call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": env.turn_id or "",
                        "tts.voice": tts.voice_name, "tts.chunk": chunk.index, "tts.epoch": env.epoch,
                        "tts.final": chunk.final, "tts.chars": len(chunk.text)},
        ) as span:
            def first_audio() -> None:
                span.add_event("first_audio")
                if chunk.index == 0:  # the turn's first audio: the stage the caller waits on
                    metrics.STAGE_SECONDS.labels(self.name, "tts_first_audio").observe(
                        time.perf_counter() - received
                    )

            result = await speak_chunk(job, tts, call, publish, self.engine.run, on_first_audio=first_audio,
                                       frames_per_message=self.settings.tts_frames_per_message)
            span.set_attribute("tts.frames", result.frames)
            span.set_attribute("tts.cancelled", result.cancelled)
            span.set_attribute("tts.synth_ms", round(result.synth_s * 1000, 1))
        self.engine.record(tts, result.synth_s, result.failed)
        log.info(
            "tts_chunk_spoken" if not result.cancelled else "tts_chunk_cancelled",
            chunk=chunk.index, final=chunk.final, epoch=env.epoch, frames=result.frames,
            audio_ms=round(result.audio_s * 1000),
            first_audio_ms=round(result.first_audio_s * 1000, 1) if result.first_audio_s is not None else None,
            synth_ms=round(result.synth_s * 1000, 1), voice=tts.voice_name, failed=result.failed,
        )
        return result
