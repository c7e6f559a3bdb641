"""Telephone audio ⇄ bus audio: G.711 (μ-law or A-law) 8 kHz ⇄ PCM16 16 kHz in exact 20 ms frames.

Shared by every transport that carries narrowband telephone audio (Twilio media streams, SIP/RTP). The resamplers
(soxr upwards, a low-pass decimator downwards) keep filter state across frames so there are no clicks at frame edges.
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


def _low_pass(taps: int = 48, cutoff_hz: float = 3_700.0) -> np.ndarray:
    """Windowed-sinc (Blackman) low-pass at 16 kHz for the 2:1 decimation to the phone rate, unit gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff_hz / SAMPLE_RATE * n) * np.blackman(taps)
    return (h / h.sum()).astype(np.float32)


class _Decimator:
    """PCM16 16 kHz -> 8 kHz: low-pass, then every second sample. The filter's history carries over frames (no
    clicks at frame edges) and each 20 ms frame in gives exactly one 20 ms frame out, so a reply leaves at the
    pace it came in. (soxr's stream resampler at 16→8 kHz returned its output in bursts of ~60 ms every third
    frame, which ingress then sent back to back: the jitter the capacity bench found.) Delay: 1.5 ms.

    Per frame, on the event loop of every call that hears the agent (50 times a second each): only the samples
    kept are filtered (a strided view of the input against the reversed taps, one matrix-vector product, instead
    of filtering every sample and dropping half), into a buffer reused from frame to frame."""

    TAPS = _low_pass()
    _REVERSED = np.ascontiguousarray(TAPS[::-1])  # the convolution as a dot product with each window
    _KEEP = len(TAPS) - 1  # input samples the next frame's first outputs still need

    def __init__(self) -> None:
        self._odd = False  # the input so far had an odd number of samples: the next output sample is at index 1
        self._fit(np.zeros(self._KEEP, dtype=np.float32), 0)

    def _fit(self, history: np.ndarray, n: int) -> None:
        """A buffer for the history and a frame of ``n`` samples, and its windows (built once: reused while frames
        are that size)."""
        keep = self._KEEP
        buf = np.zeros(keep + n, dtype=np.float32)
        buf[:keep] = history
        step = buf.strides[0]
        # the windows of the outputs kept: at input indices 0, 2, 4, ... < n, or 1, 3, 5, ... after an odd input
        self._windows = tuple(
            np.lib.stride_tricks.as_strided(buf[start:], shape=((n - start + 1) // 2, keep + 1),
                                            strides=(2 * step, step), writeable=False)
            for start in (0, 1))
        self._buf = buf

    def process(self, pcm: np.ndarray) -> np.ndarray:
        n = pcm.size
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        keep = self._KEEP
        if self._buf.size != keep + n:  # a frame of another size (the first, or a short last one)
            self._fit(self._buf[:keep], n)  # (the history is at the front)
        buf = self._buf
        buf[keep:] = pcm  # (int16 -> float32: exact)
        out = np.dot(self._windows[self._odd], self._REVERSED)
        buf[:keep] = buf[n:]  # the history for the next frame (an overlapping copy: numpy buffers it)
        self._odd = (self._odd + n) % 2 == 1
        np.clip(out, -32768, 32767, out=out)
        return np.rint(out, out=out).astype(np.int16)


class AgentAudioEncoder:
    """PCM16 16 kHz frames -> G.711 8 kHz payloads of exactly 160 bytes (20 ms), one per 20 ms frame in."""

    def __init__(self, law: g711.Law = "ulaw") -> None:
        self.law = law
        self._silence = bytes([g711.SILENCE[law]])
        self.reset()

    def reset(self) -> None:
        self._rs = _Decimator()
        self._framer = _Framer(PHONE_FRAME_BYTES)

    def encode(self, pcm16: bytes) -> list[bytes]:
        pcm8 = self._rs.process(np.frombuffer(pcm16, dtype=np.int16))
        return self._framer.push(g711.encode(pcm8, self.law))

    def flush(self) -> list[bytes]:
        """End of a reply: what the framer holds, padded with G.711 silence."""
        out = self._framer.flush(self._silence)
        self.reset()
        return out
