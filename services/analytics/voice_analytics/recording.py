"""Call recording: the calls of agents that record are assembled live into a stereo WAV and stored.

One replica owns each recorded call: the ``analytics-recordings`` consumer delivers ``CallStarted`` to one replica,
which claims the call with its ``call_recordings`` row (the primary key makes a second claim a no-op) and follows
the call's audio from the ``AUDIO`` stream with two ordered consumers (``audio.in``: the caller; ``audio.played``:
the agent as the caller heard it, from ingress's played-audio tap) from the call's first frame. Frames are written
into a per-call file as they arrive (``wav.StereoWav``: memory stays at one frame), so the stream's retention never
decides whether a long call can be recorded. At ``CallEnded`` the recording waits until it has read every frame the
stream took for the call, finishes the file and puts it in the recording store; the row then says where, how long
and how big, and when it expires (the agent's ``retention_days``). A periodic sweep deletes expired recordings.

Recordings are personal data: they are never logged, and no event or webhook carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from nats.js import api as jsapi
from pydantic import Field
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Bus, Transient
from voice_runtime.handlers import Handlers
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.paths import state_dir
from voice_runtime.recordings import RecordingStore, RecordingStoreSettings, key, make_store
from voice_runtime.settings import CommonSettings
from voice_schemas import Envelope, events, subjects
from voice_schemas.audio import H_CUT, H_TS
from voice_schemas.streams import ANALYTICS_RECORDINGS, AUDIO, CALLS, KV_AGENTS, KV_NUMBERS

from .wav import AGENT, CALLER, StereoWav

log = get_logger(__name__)
SVC = "analytics"


class RecorderSettings(RecordingStoreSettings):
    """Call recording in analytics (the store settings are shared with control-api)."""

    recording_work_dir: Path | None = Field(
        None, description="Where recordings in progress are written; STATE_DIR/recordings-live when unset"
    )
    recording_max_call_s: int = Field(
        4 * 3600, ge=60, le=24 * 3600, description="Longest recording; audio past it is not recorded"
    )
    recording_drain_timeout_s: float = Field(
        30.0, gt=0, le=600, description="After CallEnded, how long to wait for the call's last frames"
    )
    recording_sweep_s: float = Field(3600.0, ge=1, le=86400, description="How often expired recordings are deleted")


class LiveRecording:
    """Follows one call's audio from the AUDIO stream into a ``StereoWav`` until the call has ended."""

    def __init__(self, bus: Bus, call_id: str, path: Path, *, max_ms: int, drain_timeout_s: float) -> None:
        self.bus, self.call_id = bus, call_id
        self.wav = StereoWav(path, max_ms=max_ms)
        self.drain_timeout_s = drain_timeout_s
        self.ended = asyncio.Event()
        self.read_seq: dict[str, int] = {}  # subject -> stream sequence of the last frame written
        self.frames = 0
        self._subs: list[Any] = []

    async def run(self, max_wait_s: float) -> float:
        """Record until the call ends (or ``max_wait_s`` passes) and every frame of it was read; the duration."""
        try:
            for subject, channel in ((subjects.audio_in(self.call_id), CALLER),
                                     (subjects.audio_played(self.call_id), AGENT)):
                await self._follow(AUDIO.name, subject, self._frames_to(subject, channel))
            await self._follow(CALLS.name, events.CallEnded.subject_for(self.call_id), self._on_ended)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), max_wait_s)
            await self._drain()
        except BaseException:
            await self._unsubscribe()
            self.wav.abort()
            raise
        await self._unsubscribe()
        return self.wav.finish()

    async def _follow(self, stream: str, subject: str, cb: Callable[[Any], Awaitable[None]]) -> None:
        sub = await self.bus.js.subscribe(subject, stream=stream, cb=cb, ordered_consumer=True,
                                          deliver_policy=jsapi.DeliverPolicy.ALL)
        self._subs.append(sub)

    def _frames_to(self, subject: str, channel: int) -> Callable[[Any], Awaitable[None]]:
        async def on_frame(msg: Any) -> None:
            h = msg.headers or {}
            try:
                end_ms = int(h.get(H_TS, ""))
            except ValueError:
                metrics.ERRORS.labels(SVC, "recording_frame").inc()
                return
            if channel == AGENT and h.get(H_CUT) == "1":
                self.wav.cut_agent(end_ms)
            elif msg.data:
                self.wav.write(channel, end_ms, msg.data)
                self.frames += 1
            if msg.metadata is not None:
                self.read_seq[subject] = msg.metadata.sequence.stream

        return on_frame

    async def _on_ended(self, msg: Any) -> None:
        self.ended.set()

    async def _drain(self) -> None:
        """Wait until the frames the stream holds for this call (its last sequence per subject) were all read."""
        deadline = time.monotonic() + self.drain_timeout_s
        for subject in (subjects.audio_in(self.call_id), subjects.audio_played(self.call_id)):
            last = await self.bus.last_message(AUDIO.name, subject)
            while last is not None and self.read_seq.get(subject, 0) < last[0]:
                if time.monotonic() > deadline:
                    log.warning("recording_incomplete", call_id=self.call_id, subject=subjects.pattern_of(subject))
                    return
                await asyncio.sleep(0.05)

    async def _unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for s in subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()


class Recorder:
    """Claims recorded calls, runs their ``LiveRecording``s, stores them and sweeps the expired ones."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, agents: AgentDirectory, store: RecordingStore,
                 settings: RecorderSettings, spawn: Callable[..., asyncio.Task[Any]]) -> None:
        self.pool, self.bus, self.agents, self.store, self.s = pool, bus, agents, store, settings
        self.spawn = spawn
        self.work_dir = settings.recording_work_dir or state_dir() / "recordings-live"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.live: dict[str, LiveRecording] = {}

    async def on_call_started(self, env: Envelope[events.CallStarted]) -> None:
        d = env.data
        if d.channel == events.Channel.chat:
            return  # text only: nothing to record
        agent = await self.agents.version(d.agent_id, d.agent_version)
        if agent is None:
            raise Transient("agent version not in KV yet")
        if not agent.recording.enabled:
            return
        if datetime.now(UTC) - env.occurred_at > timedelta(seconds=AUDIO.max_age_s):
            return  # a backlog older than the audio stream keeps: nothing left to record
        if not await self._claim(env, agent.recording.retention_days):
            return  # another delivery (or replica) has it
        path = self.work_dir / f"{subjects.check_id(env.call_id)}.wav.part"
        rec = LiveRecording(self.bus, env.call_id, path, max_ms=self.s.recording_max_call_s * 1000,
                            drain_timeout_s=self.s.recording_drain_timeout_s)
        self.live[env.call_id] = rec
        self.spawn(self._record(env.call_id, env.tenant_id, rec), name=f"recording:{env.call_id}")

    async def _claim(self, env: Envelope[Any], retention_days: int) -> bool:
        try:
            async with self.pool.acquire() as conn:
                return bool(await conn.fetchval(
                    "INSERT INTO call_recordings(call_id, tenant_id, object_key, store, retention_days)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (call_id) DO NOTHING RETURNING 1",
                    env.call_id, env.tenant_id, key(env.tenant_id, env.call_id), self.store.kind, retention_days))
        except asyncpg.ForeignKeyViolationError as e:
            raise Transient("call row not written yet") from e
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:
            raise Transient(f"database unavailable: {e}") from e

    async def _record(self, call_id: str, tenant_id: str, rec: LiveRecording) -> None:
        try:
            duration = await rec.run(max_wait_s=self.s.recording_max_call_s + 60)
            size = await self.store.put_file(key(tenant_id, call_id), rec.wav.path)
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE call_recordings SET status = 'ready', duration_s = $2, size_bytes = $3, ready_at = now(),"
                    " expires_at = now() + make_interval(days => retention_days) WHERE call_id = $1",
                    call_id, duration, size)
            log.info("recording_stored", call_id=call_id, tenant_id=tenant_id, duration_s=round(duration, 2),
                     size_bytes=size, frames=rec.frames, store=self.store.kind)
        except asyncio.CancelledError:
            raise  # shutdown: the row stays 'recording' (see the README: production runs one analytics per call)
        except Exception as e:
            metrics.ERRORS.labels(SVC, "recording").inc()
            log.error("recording_failed", call_id=call_id, error=safe_error(e, 200))
            rec.wav.abort()
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await conn.execute("UPDATE call_recordings SET status = 'failed' WHERE call_id = $1", call_id)
        finally:
            self.live.pop(call_id, None)

    # ------------------------------------------------------------ retention
    async def sweep(self, limit: int = 500) -> int:
        """Delete the recordings past their expiry (the object, then the row); how many were deleted."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id, object_key FROM call_recordings WHERE expires_at < now() ORDER BY expires_at LIMIT $1",
                limit)
        deleted = 0
        for r in rows:
            try:
                await self.store.delete(r["object_key"])
            except Exception as e:
                metrics.ERRORS.labels(SVC, "recording_sweep").inc()
                log.warning("recording_delete_failed", call_id=r["call_id"], error=safe_error(e, 200))
                continue
            async with self.pool.acquire() as conn:
                await conn.execute("DELETE FROM call_recordings WHERE call_id = $1", r["call_id"])
            deleted += 1
        if deleted:
            log.info("recordings_expired", deleted=deleted)
        return deleted

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as e:
                log.warning("recording_sweep_failed", error=safe_error(e, 200))
            await asyncio.sleep(self.s.recording_sweep_s)


class RecordingService:
    """Mixin for the analytics service: the ``analytics-recordings`` consumer and the recorder behind it."""

    recordings = Handlers(ANALYTICS_RECORDINGS)
    recording: Recorder | None = None

    async def start_recording(self, pool: asyncpg.Pool) -> None:
        svc: Any = self
        if not isinstance(svc.bus, Bus):
            raise RuntimeError("call recording follows JetStream consumers: it needs a NATS connection")
        s: RecorderSettings = svc.settings
        assert isinstance(s, RecorderSettings) and isinstance(s, CommonSettings)
        agents = AgentDirectory(svc.kv[KV_AGENTS.bucket], svc.kv[KV_NUMBERS.bucket], s)
        self.recording = Recorder(pool, svc.bus, agents, make_store(s), s, svc.spawn)
        svc.spawn(self.recording.sweep_forever(), name="recording-sweep")

    async def stop_recording(self) -> None:
        if self.recording is not None:
            await self.recording.store.close()

    @recordings.on(events.CallStarted)
    async def on_recorded_call_started(self, env: Envelope[events.CallStarted]) -> None:
        assert self.recording is not None
        await self.recording.on_call_started(env)
