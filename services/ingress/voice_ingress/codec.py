"""Telephone audio ⇄ bus audio: G.711 (μ-law or A-law) 8 kHz ⇄ PCM16 16 kHz in exact 20 ms frames.

Shared by every transport that carries narrowband telephone audio (Twilio media streams, SIP/RTP). Stream
resamplers (soxr) keep filter state across frames so there are no clicks at frame edges.
"""

from __future__ import annotations

import numpy as np
import soxr
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE

from . import g711

PHONE_RATE = 8_000
PHONE_FRAME_BYTES = 160  # 20 ms of G.711 at 8 kHz


class _Framer:
    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= self.size:
            out.append(bytes(self._buf[: self.size]))
            del self._buf[: self.size]
        return out

    def flush(self, pad: bytes) -> list[bytes]:
        if not self._buf:
            return []
        chunk = bytes(self._buf) + pad * ((self.size - len(self._buf)) // len(pad))
        self._buf.clear()
        return [chunk[: self.size]]


class CallerAudioDecoder:
    """G.711 8 kHz (any length) -> PCM16 16 kHz frames of 640 bytes."""

    def __init__(self, law: g711.Law = "ulaw") -> None:
        self.law = law
        # quick (cubic) upsampling: no information above 4 kHz to keep, and no filter delay
        self._rs = soxr.ResampleStream(PHONE_RATE, SAMPLE_RATE, 1, dtype="int16", quality="QQ")
        self._framer = _Framer(FRAME_BYTES)

    def decode(self, data: bytes) -> list[bytes]:
        pcm16 = self._rs.resample_chunk(g711.decode(data, self.law))
        return self._framer.push(pcm16.tobytes())


class AgentAudioEncoder:
    """PCM16 16 kHz frames -> G.711 8 kHz payloads of exactly 160 bytes (20 ms)."""

    def __init__(self, law: g711.Law = "ulaw") -> None:
        self.law = law
        self._silence = bytes([g711.SILENCE[law]])
        self.reset()

    def reset(self) -> None:
        # low quality keeps anti-aliasing with ~24 ms filter delay (HQ would add ~100 ms)
        self._rs = soxr.ResampleStream(SAMPLE_RATE, PHONE_RATE, 1, dtype="int16", quality="LQ")
        self._framer = _Framer(PHONE_FRAME_BYTES)

    def encode(self, pcm16: bytes) -> list[bytes]:
        pcm8 = self._rs.resample_chunk(np.frombuffer(pcm16, dtype=np.int16))
        return self._framer.push(g711.encode(pcm8, self.law))

    def flush(self) -> list[bytes]:
        """End of a reply: emit what the resampler holds back, padded with G.711 silence."""
        tail = self._rs.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        out = self._framer.push(g711.encode(tail, self.law)) if len(tail) else []
        out += self._framer.flush(self._silence)
        self.reset()
        return out
