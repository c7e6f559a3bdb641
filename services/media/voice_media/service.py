"""The media service: caller audio -> VAD -> turn decisions -> durable events, per call.

A call is claimed from the ``MEDIA_CALLS`` durable consumer (so exactly one replica owns it; a text chat has no
audio and is never claimed). The owner core-subscribes to the call's caller audio, its playout events, its likely
final transcripts (their words weigh on the end of the turn) and its end, runs the call's ``CallPipeline`` inline on
the event loop (Silero costs ~0.2 ms of CPU per 32 ms window) and the turn model off the loop (``turn_model.py``), and
publishes what the ``TurnDetector`` decides through a per-call outbox that keeps events in order without ever making
the audio path wait on the network.

Per-call state is in this process's memory, so a replica that dies would leave its calls without turn detection.
Instead: each replica beats (``voice_runtime.liveness``, kind ``m``) and names itself as the call's follower in KV
(``calls``: ``m.<call_id>``); when its heartbeat ages out, another replica takes the claim over by compare-and-set
(one wins), rebuilds the call's turn detection from the caller audio the ``AUDIO`` stream kept since the last turn
it captured (at most ``TAKEOVER_REPLAY_S``), then follows the live audio; frames that arrive during the replay wait
and are deduplicated by their media time. Whatever the caller said since that turn is heard once; an utterance the
dead replica was about to capture is captured by the new one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Bus, Transient
from voice_runtime.handlers import EnvelopeHandler, Handlers, Message
from voice_runtime.liveness import Liveness
from voice_runtime.logging import bind_call, get_logger, safe_error
from voice_runtime.ports import Unsubscribable
from voice_runtime.service import Service
from voice_schemas import CallRecord, Envelope, events, make, parse, subjects
from voice_schemas.agent import AgentConfig, TurnSettings
from voice_schemas.audio import FRAME_MS, H_TS, TurnAudio, TurnAudioRequest, frames_in
from voice_schemas.envelope import Payload
from voice_schemas.streams import AUDIO, CALLS, KV_CALLS, KV_REPLICAS, MEDIA_CALLS, ConsumerDef

from . import turns
from .call import CallPipeline
from .engines import TURN_MODELS, VOICE_ACTIVITY
from .settings import MediaSettings
from .text_turn import sounds_finished
from .turn_model import TurnModel
from .vad import VoiceActivity

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.media")
SERVICE = "media"

TURNS = Counter("voice_media_turns_total", "Caller turns by how they ended (discarded: backchannel, blip)",
                ["end_of_turn"])
CALLS_NOT_CLAIMED = Counter("voice_media_calls_not_claimed_total", "Calls media does not follow, by reason",
                            ["reason"])
BARGE_INS = Counter("voice_media_barge_ins_total", "Suspected barge-ins by outcome", ["outcome"])
TURN_WORDS = Counter(
    "voice_media_turn_words_total",
    "What the likely final words did to the end of a turn (held_unfinished: kept open a turn the model or the "
    "hangover would have ended, held_resumed: the caller went on after that, ended_finished: ended it before the "
    "model, agreed: ended it with the model's complete, missing: the model's complete waited for them in vain "
    "(WORDS_WAIT_MS), stale/late: came after the caller went on / the turn ended)",
    ["outcome"],
)
# an stt replica that has not asked for a call's turn audio this long no longer holds it: another may take over
TURN_AUDIO_READER_TTL_S = 2.0
TAKEOVER_REPLAY_S = 20.0  # at most this much caller audio is replayed to rebuild a taken-over call's turn state
LIVENESS_KIND = "m"
PAUSE_DETECT_SECONDS = Histogram(
    "voice_media_pause_detect_seconds", "Caller speech onset to PausePlayout decision (audio time)",
    buckets=(0.032, 0.064, 0.096, 0.128, 0.16, 0.2, 0.25, 0.3, 0.5),
)


def thresholds_of(turn: TurnSettings) -> turns.TurnThresholds:
    return turns.TurnThresholds(
        end_of_turn_ms=turn.end_of_turn_ms,
        interruptible=turn.interruptible,
        min_barge_in_ms=turn.min_barge_in_ms,
        min_turn_silence_ms=turn.min_turn_silence_ms,
    )


def weighs_words(agent: AgentConfig | None) -> bool:
    """Whether the call's likely final words weigh on its turns: English speech only (``text_turn``)."""
    language = "en" if agent is None else (agent.stt.language or agent.language)
    return language.lower().replace("_", "-").split("-")[0] == "en"


class VadBatch:
    """The VAD windows of many calls, scored in one model run per pass of the event loop.

    A caller frame that completes a window puts its call here; the first one of a pass schedules ``run`` with
    ``call_soon``, so the frames that the bus delivered in the same read (every call's audio comes in on one
    connection) join it and nothing waits for a timer: at one call a window is scored in the pass it arrived in,
    as before. A call contributes one window per model run (its state is recurrent); one with more (audio that
    came late in a burst) goes on in the next rounds of the same pass. A model run that fails scores its windows
    as silence (counted, logged), so that no call's timers stall on it.

    With many calls (``VAD_BATCH_WAIT_FROM_CALLS``, 8) the first window of a batch waits up to
    ``VAD_BATCH_WAIT_MS`` (8) instead, for the windows of the passes that follow: a run of 16-32 windows costs
    ~30% less per window than runs of a few (bench/results/latest-capacity.md), for at most that much delay of a
    VAD decision; below that many calls nothing waits.
    """

    def __init__(self, vad: VoiceActivity, max_batch: int = 64, *, wait_s: float = 0.0, wait_from_calls: int = 0,
                 calls: Callable[[], int] = lambda: 0) -> None:
        self.vad = vad
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.wait_from_calls = wait_from_calls
        self._calls = calls
        self._waiting: dict[str, MediaCall] = {}
        self._scheduled = False
        self.runs = 0  # model runs
        self.windows = 0  # windows scored

    def add(self, call: MediaCall) -> None:
        self._waiting[call.call_id] = call
        if not self._scheduled:
            self._scheduled = True
            if self.wait_s > 0 and self._calls() >= self.wait_from_calls:
                asyncio.get_running_loop().call_later(self.wait_s, self.run)
            else:
                asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        self._scheduled = False
        while self._waiting:
            calls: list[MediaCall] = []
            windows: list[Any] = []
            for call in list(self._waiting.values()):
                window = None if call.closed else call.pipeline.window()
                if window is None:
                    del self._waiting[call.call_id]
                elif len(calls) < self.max_batch:
                    calls.append(call)
                    windows.append(window)
            if not calls:
                return
            try:
                probabilities = self.vad.score_many([c.pipeline.vad for c in calls], windows)
            except Exception as e:  # those windows count as silence: the calls' timers go on, nothing stalls
                metrics.ERRORS.labels(SERVICE, "vad_batch").inc()
                log.warning("vad_batch_failed", calls=len(calls), error=safe_error(e, 200))
                probabilities = [0.0] * len(calls)
            self.runs += 1
            self.windows += len(calls)
            for call, p in zip(calls, probabilities, strict=True):
                try:
                    decisions = call.pipeline.scored(p)
                    if decisions and not call.closed:
                        call.handle(decisions)
                except Exception as e:  # as a bad frame: this call's decisions only
                    metrics.ERRORS.labels(SERVICE, "audio_frame").inc()
                    log.warning("audio_window_failed", call_id=call.call_id, error=safe_error(e, 200))


class MediaCall:
    """One claimed call: its pipeline, subscriptions, outbox and the clock mapping media -> wall time."""

    def __init__(self, service: MediaService, call_id: str, tenant_id: str, pipeline: CallPipeline) -> None:
        self.service = service
        self.settings = service.settings
        self.call_id = call_id
        self.tenant_id = tenant_id
        self.pipeline = pipeline
        self.detector = pipeline.detector
        self.subs: list[Unsubscribable] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self._seq = 0
        self._outbox: asyncio.Queue[tuple[Envelope[Any], otel_context.Context | None] | None] = asyncio.Queue()
        self._publisher = service.spawn(self._publish_loop(), name=f"media-outbox:{call_id}")
        now = time.monotonic()
        self.claimed_at = now
        self.last_audio = now
        self._frames = 0
        self._bad_frames = 0
        self._wall_offset_ms = 0.0  # wall clock (epoch ms) minus media time, best recent estimate
        self._wall_offset_at = 0.0
        self._turn_audio_reader: tuple[str, float] | None = None  # (stt reader, monotonic time of its last ask)
        # while a taken-over call replays the stored audio, live frames wait here (bounded: the replay is short)
        self._held: list[tuple[bytes, int | None]] | None = None
        self._last_ts: int | None = None

    # ------------------------------------------------------------ inbound
    @staticmethod
    def _ts(headers: dict[str, str] | None) -> int | None:
        raw = headers.get(H_TS) if headers else None
        return int(raw) if raw else None

    def hold_live(self) -> None:
        self._held = []

    def replay(self, frames: list[tuple[dict[str, str], bytes]]) -> None:
        """Rebuild the turn state from stored frames, then the live frames held meanwhile; a frame is pushed once
        (by its media time)."""
        held, self._held = self._held or [], None
        for item in [(data, headers) for headers, data in frames] + [(data, ts) for data, ts in held]:
            try:
                data, meta = item
                self._push(data, meta if not isinstance(meta, dict) else self._ts(meta))
            except Exception as e:  # a bad stored frame is skipped, like a bad live one
                metrics.ERRORS.labels(SERVICE, "audio_frame").inc()
                log.warning("replayed_frame_failed", call_id=self.call_id, error=safe_error(e, 200))

    def _push(self, data: bytes, ts: int | None, batch: VadBatch | None = None) -> None:
        """A caller message (one frame or several back to back): scored now, or with ``batch`` in one model run
        with the other calls' windows that are ready in this pass of the event loop (their decisions are handled
        then, in the same pass). The pipeline is told the time of the message's first frame, as for one frame."""
        n = frames_in(data)
        if ts is not None and n > 1:
            ts -= (n - 1) * FRAME_MS
        if ts is not None and self._last_ts is not None and ts <= self._last_ts:
            return  # already had (replayed, then live)
        if ts is not None:
            self._last_ts = ts
        if batch is None:
            decisions = self.pipeline.push(data, ts)
        else:
            decisions = []
            if self.pipeline.append(data, ts) and self.pipeline.has_window:
                batch.add(self)
        self.last_audio = time.monotonic()
        self._frames += n
        self._track_clock()
        if decisions:
            self.handle(decisions)

    async def on_audio(self, msg: Message) -> None:
        try:
            ts = self._ts(msg.headers)
            if self._held is not None:
                if len(self._held) < 3000:  # messages: a minute of single frames, two of pairs, at most
                    self._held.append((msg.data, ts))
                return
            self._push(msg.data, ts, self.service.vad_batch)
        except Exception as e:  # one bad frame must not kill the call's audio path
            metrics.ERRORS.labels(SERVICE, "audio_frame").inc()
            self._bad_frames += 1
            if self._bad_frames in (1, 10, 100) or self._bad_frames % 1000 == 0:  # 50 frames/s: no log flood
                log.warning("audio_frame_failed", call_id=self.call_id, count=self._bad_frames,
                            error=safe_error(e, 200))

    async def on_turn_audio_request(self, msg: Message) -> None:
        """stt asks for the caller's turn so far (partial transcripts, the likely final one at a pause): answered
        from the ring, never on the audio path (a copy of at most max_utterance_ms; nothing is sent unless asked)."""
        if not msg.reply or self.service.bus is None:
            return
        req = TurnAudioRequest.from_bytes(msg.data)
        answer = self.turn_audio(req.reader, time.monotonic(), likely_final=req.likely_final)
        await self.service.bus.publish_nowait(msg.reply, answer.to_bytes())

    def turn_audio(self, reader: str, now: float, *, likely_final: bool = False) -> TurnAudio:
        """One reader at a time gets the turn for its partials (the others: ``taken``); a ``likely_final`` ask (one
        per pause, from whichever replica took the pause) is always answered and leaves the reader's place alone."""
        d = self.detector
        turn_id, start = d.turn_id, d.turn_start_ms
        if turn_id is None or start is None:
            if not likely_final:
                self._turn_audio_reader = None
            return TurnAudio()
        if not likely_final:
            held = self._turn_audio_reader
            if held is not None and held[0] != reader and now - held[1] < TURN_AUDIO_READER_TTL_S:
                return TurnAudio(turn_id=turn_id, taken=True)
            self._turn_audio_reader = (reader, now)
        audio = self.pipeline.audio
        begin = max(start - self.settings.pre_roll_ms, audio.origin_ms)
        end = self.pipeline.now_ms
        return TurnAudio(turn_id=turn_id, epoch=d.epoch, start_ms=begin, end_ms=end, speaking=d.speaking,
                         sample_rate=audio.sample_rate, pcm=audio.slice_ms(begin, end).tobytes())

    async def on_playout_started(self, env: Envelope[events.PlayoutStarted]) -> None:
        self.handle(self.detector.playout_started(env.turn_id, env.epoch))

    async def on_playout_finished(self, env: Envelope[events.PlayoutFinished]) -> None:
        self.handle(self.detector.playout_finished(env.turn_id))

    async def on_transcript_partial(self, env: Envelope[events.TranscriptPartial]) -> None:
        """The likely final words of the turn (decoded at a pause) weigh on its end; other partials are not ours."""
        data = env.data
        if not data.likely_final or env.turn_id is None or self.closed:
            return
        self.handle(self.detector.on_transcript(env.turn_id, data.end_ms, sounds_finished(data.text)))

    # ------------------------------------------------------------ clocks
    def _track_clock(self) -> None:
        """Map media time to wall time from the least-delayed recent frame (network jitter only adds)."""
        now = time.monotonic()
        offset = time.time() * 1000.0 - self.pipeline.now_ms
        if offset < self._wall_offset_ms or now - self._wall_offset_at > 2.0:
            self._wall_offset_ms = offset
            self._wall_offset_at = now

    def wall_ms(self, media_ms: int) -> float:
        return self._wall_offset_ms + media_ms

    def media_now(self) -> int:
        return self.pipeline.now_ms + int((time.monotonic() - self.last_audio) * 1000)

    # ------------------------------------------------------------ decisions -> events
    def handle(self, decisions: list[turns.Decision]) -> None:
        for d in decisions:
            self.on_decision(d)

    @functools.singledispatchmethod
    def on_decision(self, d: Any) -> None:
        raise TypeError(f"no handling for the decision {type(d).__name__}")

    @on_decision.register
    def _speech_began(self, d: turns.SpeechBegan) -> None:
        self.emit(events.SpeechStarted(at_ms=d.at_ms, agent_speaking=d.agent_speaking), d.turn_id, d.epoch)

    @on_decision.register
    def _speech_paused(self, d: turns.SpeechPaused) -> None:
        self.emit(events.SpeechPaused(at_ms=d.at_ms, speech_ms=d.speech_ms), d.turn_id, d.epoch)

    @on_decision.register
    def _speech_ended(self, d: turns.SpeechEnded) -> None:
        self.emit(events.SpeechStopped(at_ms=d.at_ms, speech_ms=d.speech_ms), d.turn_id, d.epoch)

    @on_decision.register
    def _words_weighed(self, d: turns.WordsWeighed) -> None:
        TURN_WORDS.labels(d.outcome).inc()

    @on_decision.register
    def _pause_playout(self, d: turns.PausePlayout) -> None:
        self.emit(events.PausePlayout(), d.agent_turn_id, d.epoch)
        if d.onset_ms is not None:
            PAUSE_DETECT_SECONDS.observe((d.at_ms - d.onset_ms) / 1000.0)
        log.info("playout_paused", call_id=self.call_id, at_ms=d.at_ms)

    @on_decision.register
    def _resume_playout(self, d: turns.ResumePlayout) -> None:
        self.emit(events.ResumePlayout(), d.agent_turn_id, d.epoch)
        BARGE_INS.labels("resumed").inc()
        log.info("playout_resumed", call_id=self.call_id, speech_ms=d.speech_ms)

    @on_decision.register
    def _barge_in(self, d: turns.BargeIn) -> None:
        self.emit(events.BargeIn(at_ms=d.at_ms, speech_ms=d.speech_ms), d.agent_turn_id, d.epoch)
        BARGE_INS.labels("committed").inc()
        log.info("barge_in", call_id=self.call_id, epoch=d.epoch, speech_ms=d.speech_ms)

    @on_decision.register
    def _run_turn_model(self, d: turns.RunTurnModel) -> None:
        self.service.request_turn_model(self, d)

    @on_decision.register
    def _segment_discarded(self, d: turns.SegmentDiscarded) -> None:
        TURNS.labels("discarded").inc()
        log.info("segment_discarded", call_id=self.call_id, speech_ms=d.speech_ms)

    @on_decision.register
    def _capture(self, d: turns.TurnEnded) -> None:
        s = self.settings
        utt = self.pipeline.utterance(d, pre_roll_ms=s.pre_roll_ms, trailing_ms=s.trailing_silence_ms)
        if not len(utt.audio):  # the ring no longer holds it (clock jumped); nothing to transcribe
            metrics.ERRORS.labels(SERVICE, "utterance_lost").inc()
            log.warning("utterance_audio_missing", call_id=self.call_id, turn_id=d.turn_id)
            return
        speech_end_wall = self.wall_ms(d.speech_end_ms)
        now_wall = time.time() * 1000.0
        end_of_turn_ms = max(float(d.end_of_turn_ms), now_wall - speech_end_wall)
        metrics.STAGE_SECONDS.labels(SERVICE, "end_of_turn").observe(end_of_turn_ms / 1000.0)
        TURNS.labels(d.reason).inc()
        data = events.UtteranceCaptured(
            utterance_id=d.turn_id,
            start_ms=utt.start_ms,
            end_ms=utt.end_ms,
            sample_rate=self.pipeline.audio.sample_rate,
            audio_b64=base64.b64encode(utt.audio.tobytes()).decode("ascii"),
            end_of_turn=d.reason,
            end_of_turn_ms=round(end_of_turn_ms, 1),
            speech_end_wall_ms=round(speech_end_wall, 1),
            speech_end_ms=d.speech_end_ms,
        )
        # the turn's trace starts here: a span from the speech offset to the decision
        span = _tracer.start_span(
            "media end_of_turn",
            # a new root: callbacks inherit the context the call was claimed in, which is not this turn's
            context=otel_context.Context(),
            start_time=int(speech_end_wall * 1e6),
            attributes={"call_id": self.call_id, "tenant_id": self.tenant_id, "turn_id": d.turn_id,
                        "voice.end_of_turn": d.reason, "voice.utterance_ms": utt.end_ms - utt.start_ms},
        )
        span.end()
        self.emit(data, d.turn_id, d.epoch, trace.set_span_in_context(span))
        log.info("turn_ended", call_id=self.call_id, turn_id=d.turn_id, reason=d.reason,
                 end_of_turn_ms=round(end_of_turn_ms), utterance_ms=utt.end_ms - utt.start_ms)

    def emit(self, data: Payload, turn_id: str | None, epoch: int,
             ctx: otel_context.Context | None = None) -> None:
        self._seq += 1
        env = make(data, tenant_id=self.tenant_id, call_id=self.call_id, turn_id=turn_id, epoch=epoch,
                   seq=self._seq)
        self._outbox.put_nowait((env, ctx))

    async def _publish_loop(self) -> None:
        bus = self.service.bus
        assert bus is not None
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            env, ctx = item
            token = otel_context.attach(ctx) if ctx is not None else None
            try:
                for attempt in range(3):  # same event id each time: JetStream dedupes a retried publish
                    try:
                        await bus.publish(env)
                        break
                    except Exception as e:
                        if attempt == 2:
                            metrics.ERRORS.labels(SERVICE, "publish").inc()
                            log.error("publish_failed", call_id=self.call_id, type=env.type, error=safe_error(e, 200))
                        else:
                            await asyncio.sleep(0.05 * (attempt + 1))
            finally:
                if token is not None:
                    otel_context.detach(token)

    # ------------------------------------------------------------ housekeeping
    def flush_metrics(self) -> None:
        if self._frames:
            metrics.AUDIO_FRAMES.labels(SERVICE, "in", "ok").inc(self._frames)
            self._frames = 0
        p = self.pipeline
        if p.frames_dropped:
            metrics.AUDIO_FRAMES.labels(SERVICE, "in", "dropped").inc(p.frames_dropped)
            p.frames_dropped = 0

    def track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        """Unsubscribe, stop model work, flush the outbox (bounded)."""
        if self.closed:
            return
        self.closed = True
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for t in list(self.tasks):
            t.cancel()
        self.flush_metrics()
        self._outbox.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._publisher), 5.0)
        self._publisher.cancel()


class MediaService(Service):
    name = "media"
    calls_started = Handlers(MEDIA_CALLS)

    def __init__(
        self,
        settings: MediaSettings,
        *,
        vad: VoiceActivity | None = None,
        turn_model: TurnModel | None = None,
        calls_durable: str = MEDIA_CALLS.durable,
    ) -> None:
        super().__init__(settings)
        self.settings: MediaSettings = settings
        self.calls_durable = calls_durable
        self._made: list[TurnModel] = []  # closed on stop; models passed in belong to the caller
        self.vad = vad if vad is not None else VOICE_ACTIVITY.get(settings.vad_engine)(settings)
        self.vad_batch = VadBatch(self.vad, wait_s=self.settings.vad_batch_wait_ms / 1000,
                                  wait_from_calls=self.settings.vad_batch_wait_from_calls,
                                  calls=lambda: len(self.calls))
        self.turn_model = turn_model
        if turn_model is None and settings.turn_model_enabled:
            self.turn_model = TURN_MODELS.get(settings.turn_model)(settings)
            self._made.append(self.turn_model)
        self.calls: dict[str, MediaCall] = {}
        self.agents: AgentDirectory | None = None
        self.replica_id = subjects.new_id()
        self.liveness: Liveness | None = None
        self._leaving = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    def consumer_for(self, handlers: Handlers) -> ConsumerDef:
        return handlers.consumer(durable=self.calls_durable)

    async def on_start(self) -> None:
        await self.vad.start()
        if self.turn_model is not None:
            await self.turn_model.start()
        self.agents = AgentDirectory(self.kv["agents"], self.kv["numbers"], self.settings)
        self.spawn(self._watchdog(), name="media-watchdog")
        if KV_REPLICAS.bucket in self.kv:
            self.liveness = Liveness(LIVENESS_KIND, self.replica_id, self.kv[KV_REPLICAS.bucket], self._take_over,
                                     on_lapsed=self._check_claims)
            await self.liveness.beat()
            self.spawn(self.liveness.run(self._leaving), name="media-liveness")
        log.info("media_models_ready", vad=self.vad.name,
                 turn_model=self.turn_model.name if self.turn_model is not None else None)

    async def check_ready(self) -> bool:
        return self.vad.loaded

    async def on_stop(self) -> None:
        self._leaving.set()
        calls = list(self.calls.values())
        self.calls.clear()
        await asyncio.gather(*(c.close() for c in calls), return_exceptions=True)
        metrics.ACTIVE_CALLS.labels(SERVICE).set(0)
        if self.liveness is not None:  # the claims stay: another replica takes the calls over at once
            await self.liveness.leave()
        for model in self._made:
            model.close()

    # ------------------------------------------------------------ claiming a call
    @calls_started.on(events.CallStarted)
    async def on_call_started(self, env: Envelope[events.CallStarted]) -> None:
        call_id = env.call_id
        if env.data.channel == events.Channel.chat:  # text only: no caller audio to follow
            CALLS_NOT_CLAIMED.labels("text_only").inc()
            return
        if call_id in self.calls:  # redelivered: we already own it
            return
        if self.stopping:
            raise Transient("media is shutting down")  # another replica claims it
        call = await self._follow(call_id, env.tenant_id, env.data.agent_id, env.data.agent_version)
        if call is not None:
            await self._claim(call_id)

    async def _follow(self, call_id: str, tenant_id: str, agent_id: str, agent_version: int, *,
                      replay_since_ms: float | None = None) -> MediaCall | None:
        """Follow the call's audio: its pipeline, subscriptions and playout state (None when it had ended).
        ``replay_since_ms``: a call taken over from a dead replica, whose turn state is first rebuilt from the
        caller audio stored since then."""
        assert self.agents is not None
        try:
            agent = await asyncio.wait_for(self.agents.version(agent_id, agent_version), 5.0)
        except Exception as e:  # KV unavailable: retry later
            raise Transient(f"agent lookup failed: {e!r}") from e
        turn_settings = agent.turn if agent is not None else TurnSettings()
        if agent is None:
            log.warning("agent_not_found", call_id=call_id, agent_id=agent_id, version=agent_version)
        if call_id in self.calls:  # claimed by a concurrent redelivery while we looked it up
            return None
        params = dataclasses.replace(self.settings.detector_params(), window_ms=self.vad.window_ms,
                                     words_wait_ms=self.settings.words_wait_ms if weighs_words(agent) else 0)
        detector = turns.TurnDetector(thresholds_of(turn_settings), params, new_id=subjects.new_id)
        pipeline = CallPipeline(
            self.vad.stream(), detector, window_samples=self.vad.window_samples,
            sample_rate=self.vad.sample_rate,
            ring_seconds=(self.settings.max_utterance_ms + self.settings.pre_roll_ms) / 1000 + 2.0,
        )
        call = MediaCall(self, call_id, tenant_id, pipeline)
        if replay_since_ms is not None:
            call.hold_live()  # live frames wait until the stored ones have been replayed
        self.calls[call_id] = call
        metrics.ACTIVE_CALLS.labels(SERVICE).set(len(self.calls))
        try:
            call.subs.append(await self.on_raw(subjects.audio_in(call_id), call.on_audio, per_call=True))
            call.subs.append(await self.on_raw(subjects.media_call_rpc(call_id, subjects.TURN_AUDIO),
                                               call.on_turn_audio_request, per_call=True))
            handlers: list[tuple[str, EnvelopeHandler]] = [
                (events.PlayoutStarted.subject_for(call_id), call.on_playout_started),
                (events.PlayoutFinished.subject_for(call_id), call.on_playout_finished),
                (events.CallEnded.subject_for(call_id), self._on_call_ended),
            ]
            if weighs_words(agent):  # sounds_finished judges English words only
                handlers.append((events.TranscriptPartial.subject_for(call_id), call.on_transcript_partial))
            for subject, handler in handlers:
                call.subs.append(await self.on_events(subject, handler, per_call=True))
            if await self._already_ended(call_id):
                await self.end_call(call_id, "ended_before_claim", capture=False)
                return None
            await self._catch_up_playout(call)
            if replay_since_ms is not None and isinstance(self.bus, Bus):
                frames = await self.bus.replay(AUDIO.name, subjects.audio_in(call_id), replay_since_ms,
                                               limit=int(TAKEOVER_REPLAY_S * 50))
                call.replay(frames)
        except Exception as e:
            await self.end_call(call_id, "claim_failed", capture=False)
            raise Transient(f"subscribing failed: {e!r}") from e
        log.info("call_claimed", call_id=call_id, tenant_id=tenant_id, agent_id=agent_id,
                 end_of_turn_ms=turn_settings.end_of_turn_ms, interruptible=turn_settings.interruptible,
                 taken_over=replay_since_ms is not None)
        return call

    # ------------------------------------------------------------ surviving a replica's death
    async def _claim(self, call_id: str) -> None:
        """Name this replica as the call's follower, for the others to take over should it die."""
        with contextlib.suppress(Exception):  # without the claim the call is followed, only not taken over
            await self.kv[KV_CALLS.bucket].put(subjects.media_claim_key(call_id), self.replica_id.encode())

    async def _take_over(self, alive: set[str]) -> None:
        """Calls followed by a replica with no heartbeat: take each claim by compare-and-set (one replica wins)
        and follow the call from the audio stored since its last captured turn."""
        if self.stopping or self.liveness is None:
            return
        kv = self.kv[KV_CALLS.bucket]
        try:
            keys = await kv.keys()
        except Exception:
            return
        for key in keys:
            if not key.startswith("m."):
                continue
            call_id = key[2:]
            try:
                entry = await kv.get(key)
            except Exception:
                continue
            owner = (entry.value or b"").decode()
            if not owner or owner == self.replica_id or owner in alive or await self.liveness.is_alive(owner):
                continue
            try:
                await kv.update(key, self.replica_id.encode(), last=entry.revision)
            except Exception:
                continue  # another replica took it first
            await self._resume(call_id, owner)

    async def _check_claims(self) -> None:
        """This replica was presumed dead for a moment: the calls another replica has taken over are its now (never
        two replicas following one call)."""
        kv = self.kv[KV_CALLS.bucket]
        for call_id in list(self.calls):
            try:
                owner = ((await kv.get(subjects.media_claim_key(call_id))).value or b"").decode()
            except Exception:
                continue
            if owner and owner != self.replica_id:
                log.warning("call_taken_by_another_replica", call_id=call_id)
                call = self.calls.pop(call_id, None)
                if call is not None:
                    metrics.ACTIVE_CALLS.labels(SERVICE).set(len(self.calls))
                    await call.close()

    async def _resume(self, call_id: str, dead: str) -> None:
        kv = self.kv[KV_CALLS.bucket]
        try:
            raw = (await kv.get(subjects.call_key(call_id))).value
        except Exception:
            raw = None
        if not raw:  # the call has ended meanwhile
            with contextlib.suppress(Exception):
                await kv.delete(subjects.media_claim_key(call_id))
            return
        record = CallRecord.model_validate_json(raw)
        since = time.time() * 1000 - TAKEOVER_REPLAY_S * 1000
        last = await self._last_event(events.UtteranceCaptured.subject_for(call_id))
        if last is not None and isinstance(last[1].data, events.UtteranceCaptured):
            since = max(since, last[1].data.speech_end_wall_ms + 1)  # turns before it were captured already
        try:
            call = await self._follow(call_id, record.tenant_id, record.agent_id, record.agent_version,
                                      replay_since_ms=since)
        except Transient as e:
            log.warning("takeover_failed", call_id=call_id, error=safe_error(e, 200))
            return
        if call is not None:
            metrics.TAKEOVERS.labels(SERVICE, "call").inc()
            log.warning("call_taken_over", call_id=call_id, tenant_id=record.tenant_id, dead_replica=dead)

    async def _last_event(self, subject: str) -> tuple[int, Envelope[Any]] | None:
        assert self.bus is not None
        last = await self.bus.last_message(CALLS.name, subject)
        if last is None:
            return None
        seq, data = last
        try:
            return seq, parse(data)
        except Exception:
            return None

    async def _already_ended(self, call_id: str) -> bool:
        return await self._last_event(events.CallEnded.subject_for(call_id)) is not None

    async def _catch_up_playout(self, call: MediaCall) -> None:
        """Agent audio that started before we subscribed (a fast greeting) still counts as playing."""
        started = await self._last_event(events.PlayoutStarted.subject_for(call.call_id))
        if started is None:
            return
        finished = await self._last_event(events.PlayoutFinished.subject_for(call.call_id))
        if finished is None or finished[0] < started[0]:
            await call.on_playout_started(started[1])

    # ------------------------------------------------------------ ending a call
    async def _on_call_ended(self, env: Envelope[events.CallEnded]) -> None:
        # not inline: closing unsubscribes this very subscription, which cancels its callback task
        self.spawn(self.end_call(env.call_id, "call_ended"), name=f"media-end:{env.call_id}")

    async def end_call(self, call_id: str, reason: str, *, capture: bool = True) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        metrics.ACTIVE_CALLS.labels(SERVICE).set(len(self.calls))
        if reason != "shutdown":
            with contextlib.suppress(Exception):
                await self.kv[KV_CALLS.bucket].delete(subjects.media_claim_key(call_id))
        decisions = call.detector.end_of_call()
        if capture and self.settings.capture_on_call_end:
            call.handle([d for d in decisions if not isinstance(d, turns.RunTurnModel)])
        await call.close()
        log.info("call_released", call_id=call_id, reason=reason)

    # ------------------------------------------------------------ turn model
    def request_turn_model(self, call: MediaCall, req: turns.RunTurnModel) -> None:
        if self.turn_model is None:
            return
        audio = call.pipeline.turn_audio(req.start_ms, req.end_ms, self.settings.pre_roll_ms)
        call.track(self.spawn(self._predict(self.turn_model, call, req, audio), name=f"turn-model:{call.call_id}"))

    async def _predict(self, model: TurnModel, call: MediaCall, req: turns.RunTurnModel, audio: Any) -> None:
        with bind_call(call_id=call.call_id):
            prediction = await model.predict(audio)
        if prediction is not None and not call.closed:  # no answer: the hangover still ends the turn
            call.handle(call.detector.on_turn_model(req.request_id, prediction.complete))

    # ------------------------------------------------------------ timers
    async def _watchdog(self) -> None:
        """Every 100 ms: stalled audio runs the silence timers; long-idle calls are freed; metrics."""
        s = self.settings
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for call in list(self.calls.values()):
                try:
                    call.flush_metrics()
                    idle = now - call.last_audio
                    if idle > s.call_idle_timeout_s:
                        self.spawn(self.end_call(call.call_id, "idle_timeout"), name=f"media-end:{call.call_id}")
                    elif idle * 1000 > s.stall_ms and call.detector.in_turn:
                        call.handle(call.pipeline.tick(call.media_now()))
                except Exception as e:
                    metrics.ERRORS.labels(SERVICE, "watchdog").inc()
                    log.warning("watchdog_failed", call_id=call.call_id, error=safe_error(e, 200))
