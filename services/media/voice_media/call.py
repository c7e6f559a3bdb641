"""One call's caller audio: 20 ms frames in, VAD windows scored, turn decisions out.

``CallAudio`` is a fixed ring of the most recent caller audio addressed by media time (so an
utterance, with its pre-roll, can be cut out when the turn ends); ``CallPipeline`` re-frames the
bus's 20 ms frames into VAD windows and feeds the ``TurnDetector``. No I/O and no broker here: the
service hands frames in and publishes what comes out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .turns import Decision, TurnDetector, TurnEnded
from .vad import VadStream


class CallAudio:
    """Ring buffer of int16 samples; sample ``n`` of the call is at media time ``origin_ms + n / rate``."""

    __slots__ = ("_buf", "_cap", "origin_ms", "sample_rate", "written")

    def __init__(self, seconds: float, sample_rate: int = 16_000) -> None:
        self.sample_rate = sample_rate
        self._cap = int(seconds * sample_rate)
        self._buf = np.zeros(self._cap, dtype=np.int16)
        self.written = 0
        self.origin_ms = 0

    @property
    def end_ms(self) -> int:
        return self.origin_ms + self.written * 1000 // self.sample_rate

    def sample_at(self, ms: int) -> int:
        return (ms - self.origin_ms) * self.sample_rate // 1000

    def append(self, samples: np.ndarray) -> None:
        n = samples.shape[0]
        if n > self._cap:
            self.written += n - self._cap
            samples, n = samples[-self._cap :], self._cap
        i = self.written % self._cap
        first = min(n, self._cap - i)
        self._buf[i : i + first] = samples[:first]
        if first < n:
            self._buf[: n - first] = samples[first:]
        self.written += n

    def append_silence(self, n: int) -> None:
        if n > self._cap:
            self.written += n - self._cap
            n = self._cap
        i = self.written % self._cap
        first = min(n, self._cap - i)
        self._buf[i : i + first] = 0
        if first < n:
            self._buf[: n - first] = 0
        self.written += n

    def view(self, start: int, n: int, scratch: np.ndarray) -> np.ndarray:
        """Samples ``start``..``start+n`` (absolute); a view when contiguous, else copied into ``scratch``."""
        i = start % self._cap
        if i + n <= self._cap:
            return self._buf[i : i + n]
        first = self._cap - i
        scratch[:first] = self._buf[i:]
        scratch[first:n] = self._buf[: n - first]
        return scratch[:n]

    def slice_ms(self, start_ms: int, end_ms: int) -> np.ndarray:
        """A copy of the audio between two media times, clamped to what the ring still holds."""
        oldest = max(0, self.written - self._cap)
        start = max(self.sample_at(start_ms), oldest)
        end = min(self.sample_at(end_ms), self.written)
        if end <= start:
            return np.zeros(0, dtype=np.int16)
        out = np.empty(end - start, dtype=np.int16)
        i = start % self._cap
        first = min(end - start, self._cap - i)
        out[:first] = self._buf[i : i + first]
        if first < end - start:
            out[first:] = self._buf[: end - start - first]
        return out


@dataclass(frozen=True, slots=True)
class Utterance:
    start_ms: int
    end_ms: int
    audio: np.ndarray  # int16


class CallPipeline:
    """Caller audio of one call through VAD into the turn detector."""

    __slots__ = (
        "_next_window", "_scratch", "_started", "_window", "audio", "detector", "frames_dropped",
        "gap_ms_filled", "max_gap_fill_ms", "vad",
    )

    def __init__(
        self,
        vad: VadStream,
        detector: TurnDetector,
        *,
        window_samples: int = 512,
        sample_rate: int = 16_000,
        ring_seconds: float = 24.0,
        max_gap_fill_ms: int = 2_000,
    ) -> None:
        self.vad = vad
        self.detector = detector
        self.audio = CallAudio(ring_seconds, sample_rate)
        self._window = window_samples
        self._scratch = np.zeros(window_samples, dtype=np.int16)
        self._next_window = 0  # absolute sample index where the next VAD window starts
        self._started = False
        self.max_gap_fill_ms = max_gap_fill_ms
        self.frames_dropped = 0
        self.gap_ms_filled = 0

    @property
    def now_ms(self) -> int:
        return self.audio.end_ms

    def push(self, pcm: bytes, ts_ms: int | None = None) -> list[Decision]:
        """One frame of PCM16 LE mono; ``ts_ms`` (media time of its first sample) realigns after loss. Its
        windows are scored at once (``append`` then ``window``/``scored`` lets the caller batch them instead)."""
        return self._score() if self.append(pcm, ts_ms) else []

    def append(self, pcm: bytes, ts_ms: int | None = None) -> bool:
        """The frame into the ring, not scored yet; False when it was dropped (odd length, duplicate or late)."""
        if len(pcm) % 2:
            self.frames_dropped += 1
            return False
        audio = self.audio
        if not self._started:
            self._started = True
            audio.origin_ms = ts_ms or 0
        elif ts_ms is not None:
            drift = ts_ms - audio.end_ms
            if drift < -10:  # duplicate or late frame: its time has already been scored
                self.frames_dropped += 1
                return False
            if drift > 10:  # frames lost upstream: keep media time honest with silence
                fill = min(drift, self.max_gap_fill_ms)
                audio.append_silence(fill * audio.sample_rate // 1000)
                self.gap_ms_filled += fill
                # a long outage is not scored as silence (a burst of VAD work): the clock jumps
                # instead, and older audio is dated that much earlier than it was
                audio.origin_ms += drift - fill
        audio.append(np.frombuffer(pcm, dtype="<i2"))
        return True

    def tick(self, now_ms: int) -> list[Decision]:
        """No audio for a while: let the silence timers run on (media) time alone."""
        return self.detector.tick(now_ms)

    @property
    def has_window(self) -> bool:
        """A VAD window is ready to score (``window``)."""
        return self.audio.written - self._next_window >= self._window

    def window(self) -> np.ndarray | None:
        """The next VAD window not scored yet (valid until the next ``append``), or None."""
        if not self.has_window:
            return None
        return self.audio.view(self._next_window, self._window, self._scratch)

    def scored(self, p: float) -> list[Decision]:
        """The window ``window`` gave has speech probability ``p``: the turn detector's decisions."""
        audio = self.audio
        self._next_window += self._window
        return self.detector.on_window(p, audio.origin_ms + self._next_window * 1000 // audio.sample_rate)

    def _score(self) -> list[Decision]:
        out: list[Decision] = []
        while (window := self.window()) is not None:
            decisions = self.scored(self.vad.probability(window))
            if decisions:
                out.extend(decisions)
        return out

    def turn_audio(self, start_ms: int, end_ms: int, pre_roll_ms: int) -> np.ndarray:
        """The turn so far, for the turn model."""
        return self.audio.slice_ms(start_ms - pre_roll_ms, end_ms)

    def utterance(self, ended: TurnEnded, *, pre_roll_ms: int, trailing_ms: int) -> Utterance:
        """The audio of an ended turn: pre-roll before the onset, trailing silence trimmed."""
        start = max(ended.start_ms - pre_roll_ms, self.audio.origin_ms)
        end = min(ended.speech_end_ms + trailing_ms, self.audio.end_ms)
        return Utterance(start, end, self.audio.slice_ms(start, end))
