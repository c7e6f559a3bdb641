"""The speech-to-text role: what the stt service needs from any recognizer.

A second recognizer (a GPU server, a cloud API) is a new module implementing ``SpeechToText``;
the service does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Transcription:
    """The final text of one utterance."""

    text: str
    language: str | None = None
    # seconds of audio that were transcribed
    duration_s: float = 0.0
    # mean token log-probability of the decoded text (None when the recognizer has none)
    avg_logprob: float | None = None
    # probability that the audio held no speech at all (None when unknown)
    no_speech_prob: float | None = None


class SpeechToText(Protocol):
    """A loaded recognizer. ``transcribe`` blocks (CPU/GPU bound): call it off the event loop."""

    @property
    def model_name(self) -> str:
        """A short, low-cardinality name for metric labels, e.g. ``whisper:tiny.en``."""
        ...

    def transcribe(self, pcm16: bytes, sample_rate: int, language: str | None = None) -> Transcription:
        """Transcribe PCM16 little-endian mono audio. ``language`` is a hint (ISO 639-1)."""
        ...
