"""Moonshine base with the real model: the one-time conversion and its cache, phone audio beside whisper on the
same clips, the engine chosen by STT_ENGINE through the unchanged service, partial and likely final transcripts of
a long utterance from the real media service, and a likely final reused by the final transcript, all on real
NATS."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from voice_devstack.speech import phone_line_pcm16, speech_int16, speech_pcm16, word_error_rate
from voice_media.service import MediaService
from voice_media.settings import MediaSettings
from voice_runtime.bus import Bus
from voice_schemas import make, parse, subjects
from voice_schemas.audio import TurnAudio
from voice_schemas.events import SpeechPaused, TranscriptFinalized, TranscriptPartial, UtteranceCaptured
from voice_stt.engines import moonshine_models
from voice_stt.engines.moonshine import MoonshineSettings, MoonshineSpeechToText
from voice_stt.engines.whisper import WhisperSettings, WhisperSpeechToText
from voice_stt.service import SttService
from voice_stt.settings import SttSettings

from ..media.caller import Call

pytestmark = pytest.mark.integration

PHONE_SENTENCES = (
    "Hello, how can I help you today?",
    "I would like to book a table for two people tomorrow evening.",
    "Yes, please, that sounds good.",
    "Could you spell your last name for me?",
)
LONG = (
    "I would like to book a table for four people on Friday evening, and if you can, somewhere near the "
    "window because it is my mother's birthday."
)


def reused_count() -> float:
    return REGISTRY.get_sample_value("voice_stt_likely_final_total", {"outcome": "reused"}) or 0.0


@pytest.fixture(scope="module")
async def moonshine() -> AsyncIterator[MoonshineSpeechToText]:
    stt = MoonshineSpeechToText()  # the state dir's cached conversion (converted on the first run)
    await stt.start()
    yield stt
    stt.close()


# ------------------------------------------------------------------ the one-time conversion
async def test_first_start_converts_into_the_state_dir_and_the_next_start_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = MoonshineSpeechToText(MoonshineSettings(state_dir=tmp_path))
    await first.start()  # converts (in a child process) into tmp_path/models
    first.close()
    models = tmp_path / "models"
    (target,) = [p for p in models.iterdir() if p.is_dir()]
    assert target.name.startswith("moonshine-base-")
    assert sorted(p.name for p in target.iterdir()) == [
        ".converted.json",
        "decoder_model_merged.onnx",
        "encoder_model.onnx",
    ]
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]  # built aside, renamed into place
    manifest = json.loads((target / ".converted.json").read_text())
    sources = moonshine_models.source_files()
    assert manifest["sources"] == {name: moonshine_models._sha256(p) for name, p in sources.items()}
    assert target.name == f"moonshine-base-{moonshine_models.cache_key(sources)[0]}"
    assert 100e6 < sum(manifest["sizes"].values()) < 200e6  # int8 MatMul weights (float graphs are 355 MB)
    stamps = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again")

    monkeypatch.setattr(moonshine_models, "convert", no_conversion)
    monkeypatch.setattr(moonshine_models, "_convert_in_child", no_conversion)
    second = MoonshineSpeechToText(MoonshineSettings(state_dir=tmp_path))
    await second.start()
    result = await second.transcribe(speech_pcm16("Yes, please."), 16_000, "en")
    second.close()
    assert word_error_rate("Yes, please.", result.text) == 0.0, result.text
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stamps


def test_a_failed_conversion_says_which_step_failed_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: Path, target: Path) -> None:
        raise RuntimeError("onnxruntime refused the graph")

    monkeypatch.setattr(moonshine_models, "_save_optimized", broken)
    with pytest.raises(
        moonshine_models.ModelConversionFailed,
        match=r"encoder_model\.ort failed while re-saving the shipped graph as ONNX.*refused",
    ):
        moonshine_models.prepared_model(tmp_path / "models")
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


# ------------------------------------------------------------------ accuracy
async def test_phone_audio_is_heard_as_well_as_by_whisper_on_the_same_clips(moonshine: MoonshineSpeechToText) -> None:
    whisper = WhisperSpeechToText(WhisperSettings(stt_model="tiny.en", stt_cpu_threads=2))
    await whisper.start()
    rows = []
    try:
        for text in PHONE_SENTENCES:
            clip = phone_line_pcm16(text)  # through 8 kHz mu-law, as a Twilio call carries it
            t0 = time.perf_counter()
            m = await moonshine.transcribe(clip, 8_000, "en")
            t1 = time.perf_counter()
            w = await whisper.transcribe(clip, 8_000, "en")
            t2 = time.perf_counter()
            rows.append((word_error_rate(text, m.text), word_error_rate(text, w.text), t1 - t0, t2 - t1, m.text))
    finally:
        whisper.close()
    for wer_m, wer_w, sec_m, sec_w, heard in rows:
        print(
            f"\nmoonshine {wer_m:.2f} ({sec_m * 1000:.0f} ms) | whisper tiny.en {wer_w:.2f} ({sec_w * 1000:.0f} ms)"
            f" | {heard}"
        )
    wer_moonshine = float(np.mean([r[0] for r in rows]))
    wer_whisper = float(np.mean([r[1] for r in rows]))
    assert wer_moonshine <= 0.15 and wer_moonshine <= wer_whisper + 0.05, (wer_moonshine, wer_whisper)


async def test_noise_and_silence_are_no_words(moonshine: MoonshineSpeechToText) -> None:
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(2 * 16_000) * 1500).astype("<i2").tobytes()
    assert (await moonshine.transcribe(noise, 16_000, "en")).text == ""
    assert (await moonshine.transcribe(bytes(16_000), 8_000, "en")).text == ""
    assert (await moonshine.transcribe(b"", 16_000, "en")).text == ""


def test_the_token_cap_follows_the_audio_length(moonshine: MoonshineSpeechToText) -> None:
    assert moonshine.max_tokens(16_000 * 10) == 130
    assert moonshine.max_tokens(1_600) == moonshine.options.moonshine_min_tokens


# ------------------------------------------------------------------ through the service, with real media
@pytest.fixture(scope="module")
async def stt_service(nats_url: str) -> AsyncIterator[SttService]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STT_ENGINE", "moonshine")
        settings = SttSettings(nats_url=nats_url, shutdown_grace_s=2.0)
    svc = SttService(settings)
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "test-caller")
    await bus.provision()
    yield bus
    await bus.close()


async def test_stt_engine_moonshine_runs_in_the_unchanged_service(stt_service: SttService, client: Bus) -> None:
    assert stt_service.stt.model_name == "moonshine:base" and await stt_service.check_ready()
    assert stt_service.partials is not None  # on by default for this engine
    call_id = subjects.new_call_id()
    sub = await client.nc.subscribe(TranscriptFinalized.subject_for(call_id))
    text = PHONE_SENTENCES[1]
    pcm = phone_line_pcm16(text)
    u = UtteranceCaptured(
        utterance_id="u-1",
        start_ms=0,
        end_ms=len(pcm) // 16,
        sample_rate=8_000,
        audio_b64=base64.b64encode(pcm).decode(),
    )
    await client.publish(make(u, tenant_id="tenant-a", call_id=call_id, turn_id="u-1"))
    out = parse((await sub.next_msg(timeout=30)).data)
    assert out.data.utterance_id == "u-1" and word_error_rate(text, out.data.text) <= 0.15, out.data.text
    await sub.unsubscribe()


async def test_partials_of_a_long_utterance_arrive_in_order_before_its_final(
    stt_service: SttService, client: Bus, nats_url: str
) -> None:
    media = MediaService(
        MediaSettings(nats_url=nats_url, shutdown_grace_s=2.0, turn_model_enabled=False),
        calls_durable="media-calls-stt-test",
    )
    await media.start()
    try:
        call = Call(client, media)
        await call.start()
        got: list[Any] = []

        async def record(msg: Any) -> None:
            got.append(parse(msg.data))

        # one subscription for both kinds: arrival order is the server's order
        sub = await client.nc.subscribe(subjects.call_filter(call.call_id, "transcript", "*"), cb=record)
        reused = reused_count()
        audio = speech_int16(LONG, deterministic=True)
        silence = np.zeros(16_000 // 2, dtype=np.int16)
        await call.speak(np.concatenate([silence, audio, silence, silence, silence]))  # real time, ~9 s
        deadline = time.monotonic() + 10
        while not any(isinstance(e.data, TranscriptFinalized) for e in got):
            assert time.monotonic() < deadline, [e.type for e in got]
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # anything published after the final would arrive by now
        kinds = [e.type for e in got]
        final = got[-1]
        assert kinds[-1] == "transcript.final" and kinds.count("transcript.final") == 1, kinds
        partials = [e for e in got if isinstance(e.data, TranscriptPartial) and not e.data.likely_final]
        assert len(partials) >= 3, kinds
        # likely finals (decoded at the pauses media reports) are their own series: same utterance, before the final
        likely = [e for e in got if isinstance(e.data, TranscriptPartial) and e.data.likely_final]
        assert {p.data.utterance_id for p in likely} <= {final.data.utterance_id}
        assert not {p.id for p in likely} & {p.id for p in partials}
        assert likely and reused_count() == reused + 1  # the last pause covered all the speech: no second decode
        ends = [p.data.end_ms for p in partials]
        assert ends == sorted(ends) and len(set(ends)) == len(ends)
        assert {p.data.utterance_id for p in partials} == {final.data.utterance_id}
        assert {(p.tenant_id, p.turn_id) for p in partials} == {(final.tenant_id, final.turn_id)}
        assert all(p.data.start_ms == final.data.start_ms for p in partials)
        assert word_error_rate(LONG, final.data.text) <= 0.2, final.data.text
        assert word_error_rate(LONG, partials[-1].data.text) <= 0.4, partials[-1].data.text  # nearly all of it
        words = [len(p.data.text.split()) for p in partials]
        assert words[0] < words[-1]  # the text grew with the utterance
        print(
            f"\n{len(partials)} partials, {words} words; each decoded in {[round(p.data.stt_ms) for p in partials]} ms"
        )

        # the utterance is over: the follower lets the call go; the call's end leaves nothing behind
        partial_calls = stt_service.partials
        assert partial_calls is not None
        deadline = time.monotonic() + 3
        while call.call_id in partial_calls.calls:
            assert time.monotonic() < deadline, "stt still follows a call with no turn in progress"
            await asyncio.sleep(0.05)
        await call.end()
        await sub.unsubscribe()
        deadline = time.monotonic() + 3
        while call.call_id not in stt_service.ended:
            assert time.monotonic() < deadline, "stt did not see the call end"
            await asyncio.sleep(0.05)
        assert call.call_id not in partial_calls.calls
    finally:
        await media.stop()


async def test_a_pause_yields_a_likely_final_that_the_final_transcript_reuses(
    stt_service: SttService, client: Bus
) -> None:
    """Media is a stand-in here (it answers with the whole sentence as the turn so far at the pause)."""
    call_id = subjects.new_call_id()
    text = PHONE_SENTENCES[1]
    pcm = phone_line_pcm16(text)
    ms = len(pcm) // 16  # 8 kHz PCM16

    async def media(msg: Any) -> None:
        await msg.respond(TurnAudio(turn_id="turn-1", start_ms=0, end_ms=ms, speaking=False, sample_rate=8_000,
                                    pcm=pcm).to_bytes())

    rpc = await client.nc.subscribe(subjects.media_call_rpc(call_id, subjects.TURN_AUDIO), cb=media)
    sub = await client.nc.subscribe(subjects.call_filter(call_id, "transcript", "*"))
    await client.publish(make(SpeechPaused(at_ms=ms - 200), tenant_id="tenant-a", call_id=call_id, turn_id="turn-1"))
    likely = parse((await sub.next_msg(timeout=30)).data)
    assert isinstance(likely.data, TranscriptPartial) and likely.data.likely_final
    assert word_error_rate(text, likely.data.text) <= 0.15, likely.data.text
    reused = reused_count()
    u = UtteranceCaptured(utterance_id="turn-1", start_ms=0, end_ms=ms, speech_end_ms=ms - 200, sample_rate=8_000,
                          audio_b64=base64.b64encode(pcm).decode())
    await client.publish(make(u, tenant_id="tenant-a", call_id=call_id, turn_id="turn-1"))
    final = parse((await sub.next_msg(timeout=30)).data)
    assert isinstance(final.data, TranscriptFinalized) and final.data.text == likely.data.text
    assert reused_count() == reused + 1 and final.data.stt_ms < likely.data.stt_ms
    await sub.unsubscribe()
    await rpc.unsubscribe()
