"""Settings of the stt service. Each engine's own settings live beside it (``engines/whisper.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings


class SttSettings(CommonSettings):
    service_name: str = "stt"
    http_port: int = Field(8082, validation_alias=AliasChoices("STT_HTTP_PORT", "HTTP_PORT"))
    stt_engine: str = Field("moonshine", description="The recognizer: a module of voice_stt.engines or an entry "
                                                   "point of the group voice.stt_engines")
    stt_concurrency: int = Field(
        1, ge=1, le=32, description="Utterances transcribed at once by this replica (and fetched at once)"
    )
    stt_timeout_s: float = Field(
        25.0, gt=0, description="Give up on one transcription after this long and retry the utterance later "
                                "(below the consumer's 30 s ack wait)"
    )
    stt_language: str | None = Field(
        "en", description="Language when the call's agent does not say; empty = detect (multilingual models)"
    )
    stt_language_lookup_timeout_s: float = Field(
        0.25, gt=0, description="Give up on finding the agent's language after this long (use STT_LANGUAGE)"
    )

    stt_partials: Literal["auto", "on", "off"] = Field(
        "auto", description="Publish transcript.partial while the caller speaks. auto: the engine's default (on for "
        "moonshine; off for whisper, which encodes 30 s of audio per decode)"
    )
    stt_partial_interval_ms: int = Field(
        500, ge=100, le=10_000, description="Pause between two re-decodes of one call's growing utterance (counted "
        "from the end of the previous decode)"
    )
    stt_partial_max_calls: int = Field(
        64, ge=1, le=10_000, description="Calls this replica follows for partials at once (more are not followed)"
    )
    stt_partial_timeout_s: float = Field(5.0, gt=0, description="Give up on one partial decode after this long")
    stt_partial_ask_timeout_s: float = Field(
        0.5, gt=0, le=10, description="Wait this long for media's answer with the turn so far"
    )

    stt_likely_final: Literal["on", "off"] = Field(
        "on", description="At a pause in the caller's speech (vad.speech_paused), decode the turn so far at once and "
        "publish it as transcript.partial with likely_final; the final transcript reuses it when the caller said no "
        "more. Decodes wait for a worker as finals do, each bounded by STT_PARTIAL_TIMEOUT_S"
    )
