"""The call's clock: milliseconds of caller media time, and where a moment of playout falls on it.

Caller audio counts its own time (``Voice-Ts`` of ``audio.in``: 20 ms per frame received, at the frame's end). Agent
audio is paced on the session's monotonic clock. To place what the caller heard on the caller's time line (the
played-audio tap, recordings), the session estimates the monotonic time at which caller media time was zero: each
caller frame arrives at or after the moment its audio ended, so ``arrival - end`` is that origin plus the frame's
network and scheduling delay, and the smallest value over a recent window is the best estimate (as NTP keeps the
sample with the least delay). The window follows slow drift between the caller's clock and ours, and a frame that
arrives late never moves the estimate. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections import deque

# 5 s of caller frames: long enough that a burst of late frames (jitter, a stalled event loop) leaves at least one
# on-time frame in the window, short enough to follow clock drift (tens of ppm: under a millisecond per minute)
WINDOW_FRAMES = 250


class CallClock:
    """Maps the session's monotonic time (seconds) to call media time (milliseconds)."""

    def __init__(self, opened_at: float, window: int = WINDOW_FRAMES) -> None:
        self._provisional = opened_at  # before any caller audio: the call's clock starts when the session opened
        self._window = window
        self._count = 0
        # monotonic deque of (frame index, origin sample): increasing samples, so the front is the window's minimum
        self._min: deque[tuple[int, float]] = deque()

    def caller_frame(self, arrived_at: float, end_ms: int) -> None:
        """A caller frame whose audio ends at ``end_ms`` of media time arrived at ``arrived_at``."""
        sample = arrived_at - end_ms / 1000
        i = self._count
        self._count += 1
        while self._min and self._min[-1][1] >= sample:
            self._min.pop()
        self._min.append((i, sample))
        while self._min[0][0] <= i - self._window:
            self._min.popleft()

    @property
    def origin(self) -> float:
        """Monotonic time (seconds) of media time zero."""
        return self._min[0][1] if self._min else self._provisional

    def media_ms(self, at: float) -> int:
        """Call media time (ms) at monotonic time ``at``."""
        return round((at - self.origin) * 1000)
