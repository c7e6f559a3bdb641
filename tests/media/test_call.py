"""CallAudio ring and CallPipeline framing with a fake (energy) VAD: no models, no I/O."""

from __future__ import annotations

import numpy as np
import pytest
from voice_media.call import CallAudio, CallPipeline
from voice_media.turns import DetectorParams, SpeechBegan, TurnDetector, TurnEnded, TurnThresholds

pytestmark = pytest.mark.unit

RATE = 16_000
FRAME = 320


class EnergyVad:
    """Speech probability from loudness: enough to drive the pipeline deterministically."""

    def __init__(self) -> None:
        self.windows: list[int] = []

    def probability(self, window: np.ndarray) -> float:
        self.windows.append(int(window.shape[0]))
        return 0.95 if float(np.abs(window.astype(np.int32)).mean()) > 1000 else 0.01

    def reset(self) -> None:
        pass


def tone(ms: int) -> np.ndarray:
    t = np.arange(ms * RATE // 1000) / RATE
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def quiet(ms: int) -> np.ndarray:
    return np.zeros(ms * RATE // 1000, dtype=np.int16)


def frames(audio: np.ndarray) -> list[bytes]:
    return [audio[i : i + FRAME].tobytes() for i in range(0, len(audio) - FRAME + 1, FRAME)]


def pipeline(**params: object) -> tuple[CallPipeline, EnergyVad]:
    vad = EnergyVad()
    params.setdefault("offset_lag_ms", 0)  # the energy VAD has no tail
    det = TurnDetector(TurnThresholds(), DetectorParams(use_turn_model=False, **params))  # type: ignore[arg-type]
    return CallPipeline(vad, det, ring_seconds=4.0), vad


def test_ring_keeps_the_latest_audio_across_the_wrap() -> None:
    ring = CallAudio(1.0)
    ring.origin_ms = 1000
    data = (np.arange(40_000) % 30_000).astype(np.int16)
    for i in range(0, len(data), 320):
        ring.append(data[i : i + 320])
    assert ring.written == 40_000 and ring.end_ms == 1000 + 2500
    got = ring.slice_ms(1000 + 2000, 1000 + 2500)
    assert np.array_equal(got, data[32_000:40_000])
    assert len(ring.slice_ms(1000, 1000 + 2500)) == 16_000, "older audio is gone, never garbage"
    assert len(ring.slice_ms(5000, 6000)) == 0


def test_frames_become_512_sample_windows_with_exact_media_times() -> None:
    p, vad = pipeline()
    audio = np.concatenate([quiet(500), tone(1000), quiet(1500)])
    out = []
    for i, f in enumerate(frames(audio)):
        out += p.push(f, ts_ms=10_000 + 20 * i)
    assert set(vad.windows) == {512} and len(vad.windows) == len(audio) // 512
    (began,) = [d for d in out if isinstance(d, SpeechBegan)]
    assert 10_500 - 32 <= began.at_ms <= 10_500 + 32
    (ended,) = [d for d in out if isinstance(d, TurnEnded)]
    assert 11_500 - 32 <= ended.speech_end_ms <= 11_500 + 32
    utt = p.utterance(ended, pre_roll_ms=200, trailing_ms=100)
    assert utt.start_ms == began.at_ms - 200 and utt.end_ms == ended.speech_end_ms + 100
    assert len(utt.audio) == (utt.end_ms - utt.start_ms) * 16


def test_lost_frames_are_filled_and_duplicates_dropped() -> None:
    p, _ = pipeline()
    f = quiet(20).tobytes()
    p.push(f, ts_ms=0)
    p.push(f, ts_ms=20)
    p.push(f, ts_ms=100)  # 60 ms lost
    assert p.now_ms == 120 and p.gap_ms_filled == 60
    p.push(f, ts_ms=40)  # late duplicate
    assert p.frames_dropped == 1 and p.now_ms == 120
    p.push(b"\x00" * 3, ts_ms=120)  # not whole samples
    assert p.frames_dropped == 2
    p.push(f, ts_ms=30_120)  # a 30 s outage: 2 s scored as silence, then the clock jumps
    assert p.now_ms == 30_140 and p.gap_ms_filled == 60 + 2000


def test_per_frame_work_does_not_grow_memory() -> None:
    import tracemalloc

    p, _ = pipeline()
    f = frames(tone(2000))
    for x in f:
        p.push(x)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(5):
        for x in f:
            p.push(x)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 64 * 1024
