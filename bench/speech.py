"""The caller's voice: utterances synthesized with piper (en_US-joe-medium), as 8 kHz μ-law.

Leading and trailing silence is trimmed, so the last frame the caller sends is speech: voice-to-voice
is then measured from the true end of speech, not from the end of piper's padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from voice_devstack.speech import caller_voice

from .twilio_caller import pcm16_to_ulaw8k

QUESTIONS = (
    "What time do you open tomorrow morning?",
    "Can I book a table for two people tonight?",
    "Do you have any vegetarian dishes on the menu?",
    "How much does a large pizza cost?",
    "Is there parking near the restaurant?",
    "Do you deliver to the city centre?",
    "Can I pay by card when I arrive?",
    "What is the soup of the day?",
    "Are you open on Sunday evenings?",
    "How long does a delivery usually take?",
)
INTERRUPTIONS = (
    "Sorry, wait, can you tell me about your desserts instead?",
    "Hold on, actually I want to ask about opening hours.",
    "Wait, stop, how much is a coffee?",
    "Excuse me, do you have gluten free bread?",
)
BACKCHANNEL = "Mm-hmm."
BACKCHANNEL_TARGET_S = 0.30


def trim_silence(pcm: np.ndarray, rate: int, threshold: int = 400) -> np.ndarray:
    """Cut leading/trailing 10 ms windows whose peak stays below ``threshold`` (int16)."""
    w = max(1, rate // 100)
    n = len(pcm) // w
    if n == 0:
        return pcm
    peaks = np.abs(pcm[: n * w].reshape(n, w).astype(np.int32)).max(axis=1)
    loud = np.nonzero(peaks > threshold)[0]
    if len(loud) == 0:
        return pcm
    return pcm[loud[0] * w : (loud[-1] + 1) * w]


@dataclass
class Utterance:
    text: str
    ulaw: bytes

    @property
    def seconds(self) -> float:
        return len(self.ulaw) / 8000.0


class Voice:
    """The caller's piper voice; every text synthesized once and cached."""

    def __init__(self) -> None:
        self._voice = caller_voice()
        self._cache: dict[tuple[str, float], Utterance] = {}

    def utter(self, text: str, length_scale: float = 1.0) -> Utterance:
        key = (text, length_scale)
        if key not in self._cache:
            rate = self._voice.sample_rate
            pcm = trim_silence(self._voice.int16(text, length_scale=length_scale), rate)
            self._cache[key] = Utterance(text, pcm16_to_ulaw8k(pcm.astype(np.int16).tobytes(), rate))
        return self._cache[key]

    def backchannel(self, target_s: float = BACKCHANNEL_TARGET_S) -> Utterance:
        """'Mm-hmm.' spoken fast enough to last about ``target_s``."""
        best: Utterance | None = None
        for scale in (1.0, 0.85, 0.7, 0.6, 0.5):
            u = self.utter(BACKCHANNEL, scale)
            if best is None or abs(u.seconds - target_s) < abs(best.seconds - target_s):
                best = u
        assert best is not None
        return best
