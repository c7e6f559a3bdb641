"""The model files and helper code media takes from the installed ``pipecat-ai`` wheel.

Pipecat ships the Silero VAD and smart-turn v3 ONNX models and a numpy-only Whisper log-mel feature
extractor. They are located without importing the ``pipecat`` package itself: its ``__init__``
prints a banner through loguru and replaces ``asyncio.wait_for`` process-wide (Python < 3.12), side
effects this service does not want.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, cast

SILERO_VAD = "audio/vad/data/silero_vad.onnx"
SMART_TURN_V3 = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
_WHISPER_FEATURES = "audio/turn/smart_turn/_whisper_features.py"


class AssetMissing(RuntimeError):
    """pipecat-ai is not installed, or no longer ships a file we rely on."""


@cache
def pipecat_root() -> Path:
    spec = importlib.util.find_spec("pipecat")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing("pipecat-ai is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def pipecat_file(relative: str) -> Path:
    path = pipecat_root() / relative
    if not path.is_file():
        raise AssetMissing(f"pipecat-ai does not ship {relative}")
    return path


@cache
def _whisper_features_module() -> ModuleType:
    path = pipecat_file(_WHISPER_FEATURES)
    spec = importlib.util.spec_from_file_location("voice_media._pipecat_whisper_features", path)
    if spec is None or spec.loader is None:
        raise AssetMissing(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def whisper_log_mel() -> Callable[..., Any]:
    """``compute_whisper_log_mel_features(audio_8s_float32, do_normalize=True) -> (80, 800) float32``."""
    return cast(Callable[..., Any], _whisper_features_module().compute_whisper_log_mel_features)
