"""A stereo 16 kHz PCM16 WAV file assembled in place as frames arrive, in any order, on the call's clock.

Left: the caller. Right: the agent as played. Silence wherever nothing was written. Each 20 ms frame is written at
its position (read-modify-write of its own samples), so memory stays at one frame whatever the call's length, and a
cut (the caller stopped hearing the agent at a moment) silences the agent channel from there on.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from voice_schemas.audio import SAMPLE_RATE

CALLER, AGENT = 0, 1
CHANNELS = 2
SAMPLE_BYTES = 2
FRAME_ALIGN = CHANNELS * SAMPLE_BYTES  # bytes per sample frame (both channels)
HEADER_BYTES = 44
SAMPLES_PER_MS = SAMPLE_RATE // 1000


def wav_header(data_bytes: int) -> bytes:
    """The canonical 44-byte RIFF/WAVE header of a stereo 16 kHz PCM16 file with ``data_bytes`` of samples."""
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, CHANNELS, SAMPLE_RATE, SAMPLE_RATE * FRAME_ALIGN,
                                    FRAME_ALIGN, 8 * SAMPLE_BYTES)
            + b"data" + struct.pack("<I", data_bytes))


class StereoWav:
    """One recording being written. Not thread-safe; one owner (the call's recording task)."""

    def __init__(self, path: Path, *, max_ms: int) -> None:
        self.path = path
        self.max_samples = max_ms * SAMPLES_PER_MS
        self.samples = 0  # the file's length, in sample frames
        self.agent_end = 0  # one past the last agent sample written
        self.dropped = 0  # frames beyond max_ms
        self._f: BinaryIO | None = path.open("w+b")
        self._f.write(wav_header(0))

    def write(self, channel: int, end_ms: int, pcm: bytes) -> bool:
        """Place a PCM16 mono frame whose audio ends at ``end_ms`` of call time; False when it lies beyond the
        longest recording allowed (or has no samples)."""
        assert self._f is not None, "finished"
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
        end = end_ms * SAMPLES_PER_MS
        start = end - len(samples)
        if start < 0:  # before the call's clock started: keep what falls after zero
            samples, start = samples[-start:], 0
        if not len(samples) or end > self.max_samples:
            self.dropped += 1
            return False
        block = self._read(start, end)
        block[:, channel] = samples
        self._write(start, block)
        if channel == AGENT:
            self.agent_end = max(self.agent_end, end)
        return True

    def cut_agent(self, at_ms: int) -> None:
        """Silence the agent channel from ``at_ms``: nothing written there was heard."""
        assert self._f is not None, "finished"
        start = max(0, at_ms * SAMPLES_PER_MS)
        if start >= self.agent_end:
            return
        block = self._read(start, self.agent_end)
        block[:, AGENT] = 0
        self._write(start, block)
        self.agent_end = start

    def finish(self) -> float:
        """Write the header and close; the recording's duration in seconds."""
        assert self._f is not None, "finished"
        f, self._f = self._f, None
        f.seek(0)
        f.write(wav_header(self.samples * FRAME_ALIGN))
        f.close()
        return self.samples / SAMPLE_RATE

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._f is not None:
            self._f.close()
            self._f = None
        self.path.unlink(missing_ok=True)

    def _read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) as an (n, 2) int16 array (zeros past the end of the file)."""
        assert self._f is not None
        n = end - start
        out = np.zeros((n, CHANNELS), dtype="<i2")
        have = max(0, min(end, self.samples) - start)
        if have:
            self._f.seek(HEADER_BYTES + start * FRAME_ALIGN)
            raw = self._f.read(have * FRAME_ALIGN)
            out[: len(raw) // FRAME_ALIGN] = np.frombuffer(raw, dtype="<i2").reshape(-1, CHANNELS)
        return out

    def _write(self, start: int, block: np.ndarray) -> None:
        assert self._f is not None
        if start > self.samples:  # fill the gap with silence explicitly (no sparse holes in the data)
            self._f.seek(HEADER_BYTES + self.samples * FRAME_ALIGN)
            gap = (start - self.samples) * FRAME_ALIGN
            while gap > 0:  # in bounded pieces: a gap may be long (the caller's media stalled)
                piece = min(gap, 1 << 20)
                self._f.write(bytes(piece))
                gap -= piece
        self._f.seek(HEADER_BYTES + start * FRAME_ALIGN)
        self._f.write(block.tobytes())
        self.samples = max(self.samples, start + len(block))
