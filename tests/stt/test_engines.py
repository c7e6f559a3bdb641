"""Engines are found, not wired: a module dropped into ``voice_stt.engines`` or an installed entry point is an
engine ``STT_ENGINE`` can name, and the stt service transcribes with it without a change to its code."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import voice_stt
from voice_runtime.engines import Registry, UnknownEngine
from voice_runtime.memory import InMemoryBus
from voice_schemas import make, subjects
from voice_schemas.events import TranscriptFinalized, UtteranceCaptured
from voice_stt.engines import ENGINES
from voice_stt.service import SttService
from voice_stt.settings import SttSettings

pytestmark = pytest.mark.unit

# an engine module as a vendor adapter would be written: the role's base, one method, one registration
ECHO_ENGINE = '''
"""A recognizer that says how much audio it heard."""

from voice_stt.engine import SpeechToText, Transcription
from voice_stt.engines import ENGINES


class EchoSpeechToText(SpeechToText):
    model_name = "echo"

    def _transcribe(self, pcm16, sample_rate, language):
        return Transcription(f"{len(pcm16)} bytes at {sample_rate} Hz", language)


ENGINES.register("echo", lambda settings: EchoSpeechToText(workers=settings.stt_concurrency))
'''

# the stt service on the in-memory bus, configured only through the environment (STT_ENGINE)
RUN_STAGE = '''
import asyncio, base64, json
from voice_runtime.memory import InMemoryBus
from voice_schemas import make, subjects
from voice_schemas.events import TranscriptFinalized, UtteranceCaptured
from voice_stt.service import SttService
from voice_stt.settings import SttSettings


async def main():
    bus = InMemoryBus("stt")
    svc = SttService(SttSettings())
    await svc.start(bus=bus)
    u = UtteranceCaptured(utterance_id="u1", start_ms=0, end_ms=100, sample_rate=8000,
                          audio_b64=base64.b64encode(bytes(1600)).decode())
    await bus.publish(make(u, tenant_id="t1", call_id=subjects.new_call_id()))
    await bus.wait_for(lambda: bus.events(TranscriptFinalized))
    out = bus.events(TranscriptFinalized)[0]
    result = {"text": out.data.text, "model": svc.stt.model_name, "service": __import__("voice_stt").__file__}
    print("RESULT", json.dumps(result), flush=True)
    await svc.stop()

asyncio.run(main())
'''


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.py"))}


def test_a_module_dropped_into_the_engines_package_is_an_engine(tmp_path: Path) -> None:
    installed = Path(voice_stt.__file__).parent
    copy = tmp_path / "voice_stt"
    shutil.copytree(installed, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "engines" / "echo.py").write_text(ECHO_ENGINE)
    changed = {k for k, v in digest(copy).items() if digest(installed).get(k) != v}
    assert changed == {"engines/echo.py"}  # the service and everything else are the code as it is
    env = {"PYTHONPATH": str(tmp_path), "STT_ENGINE": "echo", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", RUN_STAGE], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result == {"text": "1600 bytes at 8000 Hz", "model": "echo", "service": str(copy / "__init__.py")}


def write_distribution(root: Path, group: str, entry: str, module: str, source: str) -> None:
    """An installed distribution as a wheel leaves it: a module plus a dist-info with its entry points."""
    (root / f"{module}.py").write_text(source)
    info = root / "voice_test_engines-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: voice-test-engines\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")


async def test_an_entry_point_is_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = textwrap.dedent('''
        from voice_stt.engine import SpeechToText, Transcription


        class Shouting(SpeechToText):
            model_name = "shouting"

            def _transcribe(self, pcm16, sample_rate, language):
                return Transcription("HELLO", language)


        def create(settings):
            return Shouting(workers=settings.stt_concurrency, timeout_s=settings.stt_timeout_s)
    ''')
    write_distribution(tmp_path, "voice.stt_engines", "shouting = voice_test_shouting:create",
                       "voice_test_shouting", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "shouting" in ENGINES.names()
    bus = InMemoryBus("stt")
    svc = SttService(SttSettings(stt_engine="shouting", shutdown_grace_s=1.0))
    await svc.start(bus=bus)
    try:
        u = UtteranceCaptured(utterance_id="u1", start_ms=0, end_ms=100,
                              audio_b64=base64.b64encode(bytes(320)).decode())
        await bus.publish(make(u, tenant_id="t1", call_id=subjects.new_call_id()))
        await bus.wait_for(lambda: bus.events(TranscriptFinalized))
        assert bus.events(TranscriptFinalized)[0].data.text == "HELLO"
    finally:
        await svc.stop()


def test_an_unknown_engine_is_refused_at_construction_with_the_known_names() -> None:
    with pytest.raises(UnknownEngine, match="whisper"):
        SttService(SttSettings(stt_engine="no-such-engine"))


def test_discovery_skips_helpers_and_reports_modules_that_do_not_import(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "voice_test_role"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from voice_runtime.engines import Registry\n"
                                     "ENGINES = Registry('test role', __name__, 'voice.test_role')\n")
    (pkg / "good.py").write_text("from . import ENGINES\nENGINES.register('good', len)\n")
    (pkg / "_helper.py").write_text("raise RuntimeError('helpers are not engines and are not imported')\n")
    (pkg / "needs_vendor.py").write_text("import voice_no_such_vendor_sdk\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from voice_test_role import ENGINES as registry

    assert isinstance(registry, Registry)
    assert registry.names() == ["good"] and registry.get("good") is len
    with pytest.raises(UnknownEngine, match="voice_no_such_vendor_sdk"):
        registry.get("needs_vendor")
    with pytest.raises(ValueError, match="two test role engines"):
        registry.register("good", print)


def test_whisper_stays_selectable() -> None:
    assert "whisper" in ENGINES.names()
    engine: Any = ENGINES.get("whisper")(SttSettings())
    assert engine.model_name == "whisper:tiny.en"
    engine.close()


def test_moonshine_is_the_default_engine() -> None:
    # the default since `make bench-stt` showed it at least as accurate as tiny.en beam 5 on the phone set
    # (bench/results/latest-stt.md: WER 15.4% vs 16.8%, n=140 clips) at about a quarter of the time
    assert "moonshine" in ENGINES.names() and SttSettings().stt_engine == "moonshine"
    engine: Any = ENGINES.get("moonshine")(SttSettings(stt_concurrency=2))
    try:
        assert engine.model_name == "moonshine:base" and engine.workers == 2 and not engine.loaded
        assert engine.options.moonshine_threads == 1  # suits 2 cores: see MoonshineSettings
    finally:
        engine.close()
