"""Call recording end to end: control-api configures a recording agent, ingress plays a call through a fake caller
transport on a real NATS, analytics records it live into the store, control-api serves it to its tenant only.

One call (module fixture) carries every fact checked below: a caller tone and an agent tone at known times, an
agent reply cut by a barge-in, and an AUDIO stream whose retention (set to 2 s for the test) is far shorter than the
call. Expected positions come from what the test itself did (when it pushed each caller frame; when the far end
started playing each agent frame and when the clear reached it), never from the session's own clock estimate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_control_api.service import ControlApiService
from voice_devstack.stack import embedded_nats
from voice_ingress.service import IngressService
from voice_ingress.settings import IngressSettings
from voice_ingress.transports.base import CallerAudio, CallerHungUp, Started
from voice_runtime import recordings
from voice_runtime.bus import Bus, _stream_config
from voice_schemas import AgentConfig, events, make, subjects
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE, AudioFrame
from voice_schemas.streams import AUDIO

from ..control_api.conftest import make_settings
from ..control_api.helpers import bearer, create_tenant, ok
from ..ingress.fakes import FakeTransport
from ..waiting import until

pytestmark = pytest.mark.integration

TOLERANCE_MS = 40
FRAMES = 300  # a 6 s call
CALLER_TONE = (600, 1000)  # ms of call time (caller frames 31..50)
AGENT_TONE_AT = 100  # caller frame index at which tts "sends" a 0.5 s reply
AGENT_TONE_FRAMES = 25
CUT_REPLY_AT = 175  # a 3 s reply starts here...
CUT_REPLY_FRAMES = 150
BARGE_IN_AT = 225  # ...and the caller barges in 1 s later
RETENTION_S = 2.0


def tone(hz: float, n_frames: int, amplitude: int = 8000) -> list[bytes]:
    t = np.arange(n_frames * FRAME_BYTES // 2) / SAMPLE_RATE
    pcm = (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()
    return [pcm[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] for i in range(n_frames)]


SILENCE = bytes(FRAME_BYTES)


@dataclass
class Recorded:
    call_id: str
    tenant_a: Any
    tenant_b: Any
    client: httpx.AsyncClient
    wav: np.ndarray  # (samples, 2) int16
    wav_bytes: bytes
    caller_origin: float  # monotonic time of call time zero, from the test's own pushes
    agent_tone_start: float  # when the far end started playing the first agent tone frame
    cut_reply_start: float
    clear_at: float  # when the clear reached the far end
    stream_frames_in: int  # caller frames the AUDIO stream still held at the end
    store_root: Path
    db: str

    def ms(self, t: float) -> float:
        return (t - self.caller_origin) * 1000


def far_end_starts(transport: FakeTransport) -> list[float]:
    """When the far end started playing each audio frame it was sent (it plays them back to back)."""
    out, until = [], 0.0
    for s in transport.sent:
        if s.kind == "clear":
            until = s.at
        elif s.kind == "audio":
            start = max(until, s.at)
            out.append(start)
            until = start + 0.02
    return out


def spans(channel: np.ndarray, threshold: int = 1000) -> list[tuple[float, float]]:
    """(start ms, end ms) of each stretch of sound, gaps under 30 ms merged."""
    loud = np.flatnonzero(np.abs(channel.astype(np.int32)) > threshold)
    if not len(loud):
        return []
    out = []
    start = prev = loud[0]
    for i in loud[1:]:
        if i - prev > 30 * SAMPLE_RATE // 1000:
            out.append((start, prev))
            start = i
        prev = i
    out.append((start, prev))
    return [(a * 1000 / SAMPLE_RATE, (b + 1) * 1000 / SAMPLE_RATE) for a, b in out]



@pytest.fixture(scope="module")
async def recorded(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Recorded]:
    root = tmp_path_factory.mktemp("recordings")
    store_root, work = root / "store", root / "live"
    with embedded_nats() as nats_url:
        control = ControlApiService(make_settings(database_url, nats_url, recording_dir=store_root))
        app = control.app()
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://control-api.test"
        ) as client:
            a, b = await create_tenant(client, "recording A"), await create_tenant(client, "recording B")
            agent = await ok(await client.post("/v1/agents", headers=bearer(a.admin_key), json={
                "name": "recorded", "recording": {"enabled": True, "retention_days": 7,
                                                  "notice": "This call is recorded."}}), 201)
            assert agent["recording"] == {"enabled": True, "retention_days": 7, "notice": "This call is recorded."}
            analytics = AnalyticsService(AnalyticsSettings(
                database_url=database_url, nats_url=nats_url, recording_dir=store_root, recording_work_dir=work,
                log_level="WARNING"))
            ingress = IngressService(IngressSettings(nats_url=nats_url, playout_lead_ms=60, log_level="WARNING",
                                                     twilio_auth_token=None, twilio_allow_unsigned=False))
            await analytics.start()
            await ingress.start()
            bus = await Bus.connect(nats_url, "test")
            db = await asyncpg.connect(database_url)
            try:
                yield await _play_call(client, a, b, agent["id"], ingress, bus, db, store_root, database_url)
            finally:
                await db.close()
                await bus.close()
                await ingress.stop()
                await analytics.stop()


async def _play_call(client: httpx.AsyncClient, a: Any, b: Any, agent_id: str, ingress: IngressService, bus: Bus,
                     db: asyncpg.Connection, store_root: Path, database_url: str) -> Recorded:
    # the agent's config reached the data plane through control-api: KV holds recording settings
    entry = await (await bus.js.key_value("agents")).get(subjects.agent_version_key(agent_id, 1))
    cfg = AgentConfig.model_validate_json(entry.value or b"{}")
    assert cfg.recording.enabled and cfg.greeting() == "This call is recorded. Hello! How can I help you today?"

    call_id = await ingress.create_call(channel=events.Channel.test, to_number="", from_number=None,
                                        provider_call_id=None, agent_id=agent_id, tenant_id=a.id)
    assert call_id is not None
    transport = FakeTransport()
    serving = asyncio.create_task(ingress.serve(transport, transport.messages()))
    transport.push(Started(call_id=call_id, stream_id=transport.stream_id))
    await until(lambda: db.fetchval("SELECT 1 FROM call_recordings WHERE call_id = $1", call_id), "the claim")
    # from now on the AUDIO stream keeps 2 s: the call outlives its first frames in the stream
    await bus.js.update_stream(_stream_config(dataclasses.replace(AUDIO, max_age_s=RETENTION_S,
                                                                  duplicate_window_s=1.0)))

    caller = tone(440, (CALLER_TONE[1] - CALLER_TONE[0]) // 20)
    pushed: list[float] = []
    out_subject = subjects.audio_out(call_id)

    async def tts(turn: str, frames: list[bytes]) -> None:
        for i, pcm in enumerate(frames):
            last = i == len(frames) - 1
            f = AudioFrame(pcm=pcm, seq=i + 1, epoch=0, turn_id=turn, chunk=0, last_in_chunk=last, final=last)
            await bus.publish_nowait(out_subject, f.pcm, f.headers())

    start = time.monotonic()
    for k in range(1, FRAMES + 1):
        await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
        i = k - 1 - CALLER_TONE[0] // 20
        transport.push(CallerAudio((caller[i] if 0 <= i < len(caller) else SILENCE,)))
        pushed.append(time.monotonic())
        if k == AGENT_TONE_AT:
            await tts("t1", tone(1000, AGENT_TONE_FRAMES))
        elif k == CUT_REPLY_AT:
            await tts("t2", tone(1000, CUT_REPLY_FRAMES))
        elif k == BARGE_IN_AT:
            await bus.publish(make(events.BargeIn(at_ms=k * 20), tenant_id=a.id, call_id=call_id, epoch=1))
    transport.push(CallerHungUp())
    await asyncio.wait_for(serving, 10)

    info = await bus.js.stream_info(AUDIO.name, subjects_filter=subjects.audio_in(call_id))
    held = (info.state.subjects or {}).get(subjects.audio_in(call_id), 0) if info.state else 0
    await until(lambda: db.fetchval("SELECT status = 'ready' FROM call_recordings WHERE call_id = $1", call_id),
                "the recording to be stored")

    starts = far_end_starts(transport)
    clears = transport.of("clear")
    assert len(clears) == 1 and len(starts) > AGENT_TONE_FRAMES
    wav_bytes = (store_root / recordings.key(a.id, call_id)).read_bytes()
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, SAMPLE_RATE)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return Recorded(
        call_id=call_id, tenant_a=a, tenant_b=b, client=client, wav=samples, wav_bytes=wav_bytes,
        caller_origin=min(p - 0.02 * (k + 1) for k, p in enumerate(pushed)),
        agent_tone_start=starts[0], cut_reply_start=starts[AGENT_TONE_FRAMES], clear_at=clears[0].at,
        stream_frames_in=held, store_root=store_root, db=database_url,
    )


async def test_known_tones_are_in_the_right_channels_at_the_right_offsets(recorded: Recorded) -> None:
    caller, agent = spans(recorded.wav[:, 0]), spans(recorded.wav[:, 1])
    assert len(caller) == 1, caller
    assert abs(caller[0][0] - CALLER_TONE[0]) <= TOLERANCE_MS and abs(caller[0][1] - CALLER_TONE[1]) <= TOLERANCE_MS
    expected = recorded.ms(recorded.agent_tone_start)
    assert abs(agent[0][0] - expected) <= TOLERANCE_MS, (agent[0], expected)
    assert abs(agent[0][1] - (expected + AGENT_TONE_FRAMES * 20)) <= TOLERANCE_MS, (agent[0], expected)
    # no crosstalk: each side only in its own channel
    assert not spans(recorded.wav[int(CALLER_TONE[0] * 16):int(CALLER_TONE[1] * 16), 1])


async def test_a_barge_in_leaves_only_what_the_caller_heard(recorded: Recorded) -> None:
    agent = spans(recorded.wav[:, 1])
    assert len(agent) == 2, agent
    start, end = agent[1]
    assert abs(start - recorded.ms(recorded.cut_reply_start)) <= TOLERANCE_MS
    # the agent channel stops where the clear reached the caller, not where the 3 s reply (or what was sent
    # ahead of the clear) would have ended
    assert abs(end - recorded.ms(recorded.clear_at)) <= TOLERANCE_MS, (end, recorded.ms(recorded.clear_at))
    assert end - start < CUT_REPLY_FRAMES * 20 / 2


async def test_a_call_longer_than_the_audio_retention_is_recorded_in_full(recorded: Recorded) -> None:
    assert recorded.stream_frames_in < FRAMES / 2, "the stream kept the call's early audio: retention not short"
    assert len(recorded.wav) >= (FRAMES * 20 - TOLERANCE_MS) * 16
    assert spans(recorded.wav[:, 0])  # the caller tone, long gone from the stream, is in the recording


async def test_the_call_lists_its_recording_and_only_its_tenant_downloads_it(recorded: Recorded) -> None:
    c, a, b = recorded.client, recorded.tenant_a, recorded.tenant_b
    detail = await ok(await c.get(f"/v1/calls/{recorded.call_id}", headers=bearer(a.admin_key)), 200)
    rec = detail["recording"]
    assert rec["status"] == "ready" and rec["size_bytes"] == len(recorded.wav_bytes)
    assert abs(rec["duration_s"] - len(recorded.wav) / SAMPLE_RATE) < 0.01 and rec["expires_at"]
    got = await c.get(rec["url"], headers=bearer(a.admin_key))
    assert got.status_code == 200 and got.headers["content-type"] == "audio/wav"
    assert got.content == recorded.wav_bytes
    other = await c.get(rec["url"], headers=bearer(b.admin_key))
    assert other.status_code == 404
    assert b"RIFF" not in other.content and other.json()["detail"] == "call not found"  # as for a missing call
    assert (await c.get(rec["url"])).status_code == 401


async def test_deleting_the_call_deletes_its_recording(recorded: Recorded) -> None:
    c, a, b = recorded.client, recorded.tenant_a, recorded.tenant_b
    path = recorded.store_root / recordings.key(a.id, recorded.call_id)
    assert (await c.delete(f"/v1/calls/{recorded.call_id}", headers=bearer(b.admin_key))).status_code == 404
    assert path.exists()
    assert (await c.delete(f"/v1/calls/{recorded.call_id}", headers=bearer(a.admin_key))).status_code == 204
    assert not path.exists()
    assert (await c.get(f"/v1/calls/{recorded.call_id}/recording", headers=bearer(a.admin_key))).status_code == 404
    db = await asyncpg.connect(recorded.db)
    try:
        assert await db.fetchval("SELECT count(*) FROM call_recordings WHERE call_id = $1", recorded.call_id) == 0
    finally:
        await db.close()

