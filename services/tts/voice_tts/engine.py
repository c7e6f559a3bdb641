"""The text-to-speech role: what the tts service needs from any synthesizer.

A second synthesizer (another engine, a GPU server) is a new module implementing ``TextToSpeech``
plus an entry in the voice registry (``voices.py``); the service does not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class TextToSpeech(Protocol):
    """One loaded voice. ``synthesize`` blocks (CPU bound): pull it from a worker thread."""

    @property
    def voice_name(self) -> str:
        """A short, low-cardinality name for logs and metric labels, e.g. ``piper:joe``."""
        ...

    @property
    def sample_rate(self) -> int:
        """Rate of the audio ``synthesize`` yields."""
        ...

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Float32 mono audio in [-1, 1], one array per piece as soon as it is ready (a sentence for piper).

        Lazy: work happens as the iterator is advanced, so a caller can stop between pieces.
        """
        ...
