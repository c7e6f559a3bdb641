"""Synthesizer audio -> bus audio frames: streaming resampling to 16 kHz and exact 20 ms PCM16 frames.

One ``FrameAssembler`` per reply chunk. The resampler keeps its filter state across the pieces of a chunk,
so joining piper's sentences leaves no click; ``finish`` flushes the filter tail and pads the last frame.
"""

from __future__ import annotations

import numpy as np
import soxr
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """Float32 [-1, 1] -> PCM16 little-endian bytes (clipped, rounded)."""
    scaled = np.rint(np.clip(audio, -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2").tobytes()


class FrameAssembler:
    """Feed native-rate float audio with ``push``; get whole 640-byte frames back as they fill."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, frame_bytes: int = FRAME_BYTES) -> None:
        self.in_rate, self.out_rate, self.frame_bytes = in_rate, out_rate, frame_bytes
        self._resampler = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ") if in_rate != out_rate else None
        )
        self._buf = bytearray()
        self.frames_out = 0
        self.finished = False

    def _resample(self, audio: np.ndarray, last: bool) -> np.ndarray:
        x = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if self._resampler is None:
            return x
        return self._resampler.resample_chunk(x, last=last)

    def _cut(self) -> list[bytes]:
        n = len(self._buf) // self.frame_bytes
        frames = [bytes(self._buf[i * self.frame_bytes:(i + 1) * self.frame_bytes]) for i in range(n)]
        del self._buf[: n * self.frame_bytes]
        self.frames_out += n
        return frames

    def push(self, audio: np.ndarray) -> list[bytes]:
        if self.finished:
            raise RuntimeError("push after finish")
        self._buf += float_to_pcm16(self._resample(audio, last=False))
        return self._cut()

    def finish(self) -> list[bytes]:
        """The remaining frames: resampler tail, the last partial frame padded with silence, and at least
        one (silent) frame when nothing came out at all, so every chunk ends with a frame."""
        if self.finished:
            return []
        self.finished = True
        if self._resampler is not None:
            self._buf += float_to_pcm16(self._resample(np.zeros(0, dtype=np.float32), last=True))
        frames = self._cut()
        if self._buf:
            frames.append(bytes(self._buf) + bytes(self.frame_bytes - len(self._buf)))
            self._buf.clear()
            self.frames_out += 1
        if self.frames_out == 0:
            frames.append(bytes(self.frame_bytes))
            self.frames_out = 1
        return frames
