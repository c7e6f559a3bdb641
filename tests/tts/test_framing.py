"""Resampling and framing of synthesizer audio into bus frames."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from voice_schemas.audio import FRAME_BYTES
from voice_tts.framing import FrameAssembler, float_to_pcm16

from .fakes import tone

pytestmark = pytest.mark.unit


def pcm_to_float(frames: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float32) / 32767.0


def test_frames_are_exact_and_cover_the_audio() -> None:
    audio = tone(1.0, 22_050)
    asm = FrameAssembler(22_050)
    frames: list[bytes] = []
    for piece in np.array_split(audio, 7):  # uneven pieces, like sentences
        frames += asm.push(piece)
    frames += asm.finish()
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert len(frames) in (50, 51)  # 1 s = 50 frames, the last one padded
    assert asm.frames_out == len(frames)


def test_streaming_resampling_matches_one_shot_without_clicks() -> None:
    audio = tone(0.8, 22_050, freq=300.0)
    asm = FrameAssembler(22_050)
    frames: list[bytes] = []
    for piece in np.array_split(audio, 5):
        frames += asm.push(piece)
    frames += asm.finish()
    streamed = pcm_to_float(frames)
    whole = soxr.resample(audio, 22_050, 16_000, quality="HQ")
    n = len(whole)
    assert len(streamed) >= n
    # same signal sample for sample (quantisation only): piece boundaries leave no discontinuity
    assert np.max(np.abs(streamed[:n] - whole)) < 2e-3
    assert np.all(streamed[n:] == 0.0)  # padding is silence
    # no jump larger than the tone itself allows anywhere in the stream
    max_step = 2 * np.pi * 300 / 16_000 * 0.5 * 1.1
    assert np.max(np.abs(np.diff(streamed[: n - 1]))) < max_step


def test_no_audio_still_yields_one_silent_frame() -> None:
    asm = FrameAssembler(22_050)
    frames = asm.finish()
    assert frames == [bytes(FRAME_BYTES)]
    assert asm.finish() == []


def test_same_rate_passes_through_and_pads_last_frame() -> None:
    audio = tone(0.03, 16_000)  # 480 samples = 1.5 frames
    asm = FrameAssembler(16_000)
    frames = asm.push(audio) + asm.finish()
    assert len(frames) == 2
    assert frames[0] + frames[1][:320] == float_to_pcm16(audio)
    assert frames[1][320:] == bytes(320)


def test_push_after_finish_is_refused() -> None:
    asm = FrameAssembler(16_000)
    asm.finish()
    with pytest.raises(RuntimeError):
        asm.push(tone(0.02, 16_000))


def test_float_to_pcm16_clips_and_rounds() -> None:
    pcm = float_to_pcm16(np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5], dtype=np.float32))
    assert np.frombuffer(pcm, dtype="<i2").tolist() == [0, 32767, -32767, 32767, -32767, 16384]
