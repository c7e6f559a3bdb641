"""The recording store against a local S3-compatible server (moto in server mode) and as a directory, the retention
sweep, and the pure pieces: the stereo WAV assembled in place, the call's clock, the spoken notice."""

from __future__ import annotations

import io
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from voice_analytics.recording import Recorder, RecorderSettings
from voice_analytics.wav import AGENT, CALLER, StereoWav
from voice_ingress.callclock import CallClock
from voice_runtime import db as runtime_db
from voice_runtime.recordings import (
    DirectoryStore,
    RecordingNotFound,
    RecordingStore,
    RecordingStoreSettings,
    S3Store,
    key,
    make_store,
)
from voice_schemas import AgentConfig
from voice_schemas.agent import RecordingSettings

from ..conftest import free_port


@pytest.fixture(scope="module")
def s3_settings() -> Iterator[RecordingStoreSettings]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        bucket = "voice-recordings"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield RecordingStoreSettings(recording_s3_bucket=bucket, recording_s3_endpoint_url=endpoint,
                                     recording_s3_access_key_id=SecretStr("test"),
                                     recording_s3_secret_access_key=SecretStr("test"))
    finally:
        server.stop()


async def read_all(store: RecordingStore, k: str) -> bytes:
    return b"".join([c async for c in store.read(k)])


async def round_trip(store: RecordingStore, tmp_path: Path) -> None:
    body = uuid.uuid4().bytes * 100_000  # 1.6 MB: several read chunks
    src = tmp_path / "r.wav.part"
    src.write_bytes(body)
    k = key("tenant-a", "CA" + uuid.uuid4().hex)
    assert await store.put_file(k, src) == len(body)
    assert not src.exists()  # the store took the file
    assert await store.exists(k)
    assert await read_all(store, k) == body
    await store.delete(k)
    assert not await store.exists(k)
    with pytest.raises(RecordingNotFound):
        await read_all(store, k)
    await store.delete(k)  # deleting what is gone is a no-op


@pytest.mark.integration
async def test_the_s3_store_round_trips_against_a_local_s3_server(s3_settings: RecordingStoreSettings,
                                                                  tmp_path: Path) -> None:
    store = make_store(s3_settings)
    assert isinstance(store, S3Store)
    try:
        await round_trip(store, tmp_path)
    finally:
        await store.close()


async def test_the_directory_store_round_trips_and_refuses_keys_outside_it(tmp_path: Path) -> None:
    store = make_store(RecordingStoreSettings(recording_dir=tmp_path / "store"))
    assert isinstance(store, DirectoryStore)
    await round_trip(store, tmp_path)
    with pytest.raises(ValueError):
        await store.exists("../elsewhere.wav")
    with pytest.raises(ValueError):
        key("tenant/../x", "CA1")


@pytest.mark.integration
async def test_the_sweep_deletes_expired_recordings_and_keeps_the_others(s3_settings: RecordingStoreSettings,
                                                                         database_url: str, tmp_path: Path) -> None:
    pool = await runtime_db.connect(database_url, max_size=2)
    store = make_store(s3_settings)
    try:
        calls = {}
        for name, expires in (("old", "now() - interval '1 day'"), ("new", "now() + interval '1 day'")):
            call_id = "CA" + uuid.uuid4().hex
            src = tmp_path / f"{name}.part"
            src.write_bytes(b"RIFF" + bytes(100))
            await store.put_file(key("tenant-s", call_id), src)
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO calls(id, tenant_id, agent_id, agent_version, channel, status, started_at)"
                    " VALUES ($1, 'tenant-s', 'a', 1, 'test', 'ended', now())", call_id)
                await conn.execute(
                    "INSERT INTO call_recordings(call_id, tenant_id, status, object_key, store, retention_days,"
                    f" expires_at) VALUES ($1, 'tenant-s', 'ready', $2, 's3', 1, {expires})",
                    call_id, key("tenant-s", call_id))
            calls[name] = call_id
        recorder = Recorder(pool, None, None, store, RecorderSettings(recording_work_dir=tmp_path / "w"),  # type: ignore[arg-type]
                            spawn=None)  # type: ignore[arg-type]
        assert await recorder.sweep() >= 1
        assert not await store.exists(key("tenant-s", calls["old"]))
        assert await store.exists(key("tenant-s", calls["new"]))
        async with pool.acquire() as conn:
            left = await conn.fetch("SELECT call_id FROM call_recordings WHERE tenant_id = 'tenant-s'")
        assert {r["call_id"] for r in left} == {calls["new"]}
    finally:
        await store.close()
        await pool.close()


# ------------------------------------------------------------------ pure pieces
def test_the_wav_places_frames_by_position_in_any_order_and_a_cut_silences_the_agent(tmp_path: Path) -> None:
    w = StereoWav(tmp_path / "x.wav", max_ms=10_000)
    one = np.full(320, 1000, dtype="<i2").tobytes()
    assert w.write(AGENT, 100, one)  # 80-100 ms
    assert w.write(CALLER, 40, one)  # 20-40 ms, written after a later frame
    assert w.write(AGENT, 120, one)
    w.cut_agent(110)
    assert not w.write(CALLER, 10_020, one)  # past the longest recording
    duration = w.finish()
    with wave.open(io.BytesIO((tmp_path / "x.wav").read_bytes())) as f:
        assert (f.getnchannels(), f.getframerate()) == (2, 16_000)
        s = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").reshape(-1, 2)
    assert duration == pytest.approx(0.12) and len(s) == 1920
    assert (s[320:640, CALLER] == 1000).all() and not s[:320, CALLER].any() and not s[640:, CALLER].any()
    assert (s[1280:1760, AGENT] == 1000).all() and not s[1760:, AGENT].any() and not s[:1280, AGENT].any()


def test_the_call_clock_takes_the_least_delayed_caller_frame_and_follows_drift() -> None:
    c = CallClock(opened_at=50.0, window=10)
    assert c.media_ms(51.0) == 1000  # before caller audio: from the session's opening
    c.caller_frame(100.020 + 0.030, 20)  # 30 ms late
    c.caller_frame(100.040 + 0.002, 40)  # 2 ms late: the best estimate
    c.caller_frame(100.060 + 0.050, 60)
    assert c.media_ms(101.0) == 998
    for i in range(4, 20):  # the window forgets the old best as the caller's clock drifts 5 ms later
        c.caller_frame(100.0 + i * 0.02 + 0.007, i * 20)
    assert c.media_ms(101.0) == 993


def test_the_notice_is_spoken_before_the_greeting_only_when_recording() -> None:
    base = AgentConfig(id="a", tenant_id="t", first_message="Hi there.")
    assert base.greeting() == "Hi there."
    notice = RecordingSettings(enabled=True, notice="This call is recorded.")
    assert base.model_copy(update={"recording": notice}).greeting() == "This call is recorded. Hi there."
    off = RecordingSettings(enabled=False, notice="This call is recorded.")
    assert base.model_copy(update={"recording": off}).greeting() == "Hi there."
    silent = base.model_copy(update={"recording": notice, "first_message": None})
    assert silent.greeting() == "This call is recorded."

