"""Tones ingress makes itself: in-band DTMF (keys pressed towards the caller's side) and the hold tone.

DTMF (ITU-T Q.23/Q.24): each key is the sum of one row and one column frequency, ``TONE_MS`` of tone then
``GAP_MS`` of silence, each frequency at ``LEVEL`` of full scale (about -10 dBFS, well inside what a G.711 channel
carries without clipping), with 2 ms ramps so the edges do not splatter into other bands. ``detect`` is the
receiving side: a Goertzel filter per frequency over each tone burst, the strongest row and column each well above
the others of its group (what a phone menu's DTMF receiver does, and what the tests check the tones with).

The hold tone: a soft 200 ms beep (440 Hz, about -26 dBFS) every 4 s, silence between, as PCM16 16 kHz frames.
"""

from __future__ import annotations

import math

import numpy as np
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE

from . import g711

ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
FREQS: dict[str, tuple[float, float]] = {k: (ROWS[r], COLS[c]) for r, row in enumerate(KEYPAD)
                                         for c, k in enumerate(row)}
DIGITS = frozenset(FREQS)
TONE_MS = 100
GAP_MS = 60
LEVEL = 0.3  # of full scale, per frequency (the sum peaks at 0.6)
RAMP_MS = 2.0
MAX_DIGITS = 32  # one command presses at most this many keys (about 5 s of tones)


class BadDigits(ValueError):
    """Not a string of 1..MAX_DIGITS DTMF keys (0-9 * # A-D)."""


def check_digits(digits: str) -> str:
    if not isinstance(digits, str) or not 1 <= len(digits) <= MAX_DIGITS or any(d not in DIGITS for d in digits):
        raise BadDigits(f"DTMF keys are 1 to {MAX_DIGITS} of 0-9 * # A-D")
    return digits


def duration_s(digits: str) -> float:
    """How long the in-band tones of ``digits`` last (the last key's gap included)."""
    return len(digits) * (TONE_MS + GAP_MS) / 1000


def dtmf(digits: str, rate: int) -> np.ndarray:
    """PCM16 samples at ``rate``: each key's tone, then its gap."""
    check_digits(digits)
    n_tone, n_gap = rate * TONE_MS // 1000, rate * GAP_MS // 1000
    t = np.arange(n_tone) / rate
    ramp = max(1, int(rate * RAMP_MS / 1000))
    envelope = np.ones(n_tone)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[:ramp], envelope[-ramp:] = edge, edge[::-1]
    out = []
    for d in digits:
        low, high = FREQS[d]
        tone = LEVEL * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)) * envelope
        out.append(np.round(tone * 32767).astype(np.int16))
        out.append(np.zeros(n_gap, dtype=np.int16))
    return np.concatenate(out)


def pcm16_frames(digits: str) -> list[bytes]:
    """The tones as PCM16 16 kHz frames of 20 ms (the session's and WebRTC's format)."""
    pcm = dtmf(digits, SAMPLE_RATE).tobytes()
    pcm += b"\x00" * (-len(pcm) % FRAME_BYTES)
    return [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def g711_frames(digits: str, law: g711.Law = "ulaw") -> list[bytes]:
    """The tones made at 8 kHz and encoded G.711 (no resampling), 160-byte frames of 20 ms."""
    encoded = g711.encode(dtmf(digits, 8000), law)
    encoded += bytes([g711.SILENCE[law]]) * (-len(encoded) % 160)
    return [encoded[i:i + 160] for i in range(0, len(encoded), 160)]


# ---------------------------------------------------------------- the receiving side
def _goertzel_power(x: np.ndarray, freq: float, rate: int) -> float:
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x.tolist():
        s1, s2 = v + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def _key(block: np.ndarray, rate: int) -> str | None:
    rows = [_goertzel_power(block, f, rate) for f in ROWS]
    cols = [_goertzel_power(block, f, rate) for f in COLS]
    r, c = int(np.argmax(rows)), int(np.argmax(cols))
    energy = float(np.dot(block, block)) * len(block) / 2 or 1.0  # a pure tone's Goertzel power is about this
    # each group's winner stands well above the others of its group, and both carry most of the burst's energy
    others_r = sorted(rows)[-2]
    others_c = sorted(cols)[-2]
    if rows[r] < 8 * others_r or cols[c] < 8 * others_c or (rows[r] + cols[c]) < 0.3 * energy:
        return None
    return KEYPAD[r][c]


def detect(pcm: np.ndarray, rate: int, *, min_tone_ms: float = 40.0) -> str:
    """The DTMF keys in ``pcm`` (int16 at ``rate``), in order: each burst of sound at least ``min_tone_ms`` long,
    separated by quieter stretches, decoded with Goertzel filters."""
    x = pcm.astype(np.float64)
    step = max(1, rate // 200)  # 5 ms blocks
    n = len(x) // step
    if n == 0:
        return ""
    blocks = x[: n * step].reshape(n, step)
    level = np.sqrt((blocks ** 2).mean(axis=1))
    loud = level > max(300.0, 0.1 * float(level.max()))
    keys = []
    i = 0
    while i < n:
        if not loud[i]:
            i += 1
            continue
        j = i
        while j < n and loud[j]:
            j += 1
        if (j - i) * step * 1000 / rate >= min_tone_ms:
            burst = x[(i + 1) * step:(j - 1) * step]  # the edges (ramps, resampler smear) left out
            key = _key(burst, rate)
            if key is not None:
                keys.append(key)
        i = j
    return "".join(keys)


# ---------------------------------------------------------------- hold
HOLD_PERIOD_S = 4.0
HOLD_BEEP_S = 0.2
HOLD_FREQ = 440.0
HOLD_LEVEL = 0.05


class HoldTone:
    """An endless hold tone as PCM16 16 kHz frames of 20 ms: a soft beep every ``HOLD_PERIOD_S``."""

    def __init__(self) -> None:
        samples = FRAME_BYTES // 2
        t = np.arange(int(SAMPLE_RATE * HOLD_BEEP_S)) / SAMPLE_RATE
        ramp = int(SAMPLE_RATE * 0.01)
        envelope = np.ones(len(t))
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        envelope[:ramp], envelope[-ramp:] = edge, edge[::-1]
        beep = np.round(HOLD_LEVEL * 32767 * np.sin(2 * np.pi * HOLD_FREQ * t) * envelope).astype(np.int16)
        period = np.zeros(int(SAMPLE_RATE * HOLD_PERIOD_S), dtype=np.int16)
        period[: len(beep)] = beep
        raw = period.tobytes()
        self._frames = [raw[i:i + samples * 2] for i in range(0, len(raw), samples * 2)]
        self._i = 0

    def next_frame(self) -> bytes:
        frame = self._frames[self._i]
        self._i = (self._i + 1) % len(self._frames)
        return frame
