"""Settings of the tts service. Each engine's own settings live beside it (``engines/piper.py``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings


class TtsSettings(CommonSettings):
    service_name: str = "tts"
    http_port: int = Field(8084, validation_alias=AliasChoices("TTS_HTTP_PORT", "HTTP_PORT"))
    tts_engine: str = Field("piper", description="The synthesizer: a module of voice_tts.engines or an entry "
                                                 "point of the group voice.tts_engines")
    tts_voice: str = Field("joe", description="Voice for agents that name none (or an unknown one)")
    tts_concurrency: int = Field(
        1, ge=1, le=32,
        description="Sentences synthesized at once by this replica; calls take turns sentence by sentence",
    )
    tts_synthesis_timeout_s: float = Field(
        20.0, gt=0, description="Give up on one piece (a sentence) after this long and close the chunk"
    )
    tts_split_first_clause: bool = Field(
        True, description="Synthesize the first clause of a reply on its own so its audio starts sooner"
    )
    tts_frames_per_message: int = Field(
        5, ge=1, le=25, description="20 ms frames per audio.out message, of frames synthesized together (none "
        "waits for another): fewer, larger bus messages for nats-server and ingress, no added delay",
    )
    tts_call_idle_s: float = Field(
        3600.0, gt=0, description="Forget a call's state after this long without activity (missed CallEnded)"
    )
