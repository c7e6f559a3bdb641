"""Real Silero VAD and smart-turn v3 on piper speech (wideband and phone-band), no bus."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import pytest
from voice_media.call import CallPipeline
from voice_media.turn_model import TurnModel
from voice_media.turns import (
    BargeIn,
    DetectorParams,
    PausePlayout,
    ResumePlayout,
    SpeechBegan,
    SpeechEnded,
    TurnDetector,
    TurnEnded,
    TurnThresholds,
)

from .conftest import RATE, Speech, phone_band, with_silence

pytestmark = pytest.mark.integration

FRAME = 320


def run(pipeline: CallPipeline, audio: np.ndarray) -> list[object]:
    out: list[object] = []
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        out += pipeline.push(audio[i : i + FRAME].tobytes(), ts_ms=i * 1000 // RATE)
    return out


def new_pipeline(silero: object, turn: TurnThresholds | None = None) -> CallPipeline:
    det = TurnDetector(turn or TurnThresholds(), DetectorParams(use_turn_model=False))
    return CallPipeline(silero.stream(), det)  # type: ignore[attr-defined]


@pytest.mark.parametrize("band", ["wideband", "phone"])
def test_silero_finds_onset_and_offset_within_100ms(silero: object, piper_speech: dict[str, Speech],
                                                    band: str) -> None:
    s = piper_speech["sentence"]
    audio = with_silence(s.audio, 1000, 1500)
    if band == "phone":
        audio = phone_band(audio)
    out = run(new_pipeline(silero), audio)
    began = [d for d in out if isinstance(d, SpeechBegan)]
    stopped = [d for d in out if isinstance(d, SpeechEnded)]
    (turn,) = [d for d in out if isinstance(d, TurnEnded)]
    onset, offset = 1000 + s.onset_ms, 1000 + s.offset_ms
    print(f"\n[{band}] onset truth {onset} vad {began[0].at_ms}; offset truth {offset} vad {stopped[-1].at_ms}")
    assert abs(began[0].at_ms - onset) <= 100
    assert abs(stopped[-1].at_ms - offset) <= 100
    assert turn.reason == "silence" and turn.start_ms == began[0].at_ms


def test_vad_cost_per_20ms_frame(silero: object, piper_speech: dict[str, Speech]) -> None:
    """The per-frame cost of the whole audio path (re-framing, Silero, state machine)."""
    audio = np.tile(with_silence(piper_speech["sentence"].audio, 500, 1000), 4)
    frames = [audio[i : i + FRAME].tobytes() for i in range(0, len(audio) - FRAME + 1, FRAME)]
    p = new_pipeline(silero)
    run(p, audio[: RATE])  # warm-up
    per_frame: list[float] = []
    for _ in range(3):
        p = new_pipeline(silero)
        cpu0 = time.thread_time()
        for f in frames:
            p.push(f)
        per_frame.append((time.thread_time() - cpu0) / len(frames) * 1000)
    best = min(per_frame)
    calls_per_core = 20.0 / best  # a call needs one frame per 20 ms
    print(f"\nVAD path: {statistics.median(per_frame) * 1000:.0f} us CPU per 20 ms frame "
          f"(best {best * 1000:.0f} us) over {len(frames)} frames -> ~{calls_per_core:.0f} calls per core")
    assert best < 1.0, "VAD must cost well under 1 ms of CPU per 20 ms frame"


def test_backchannel_burst_pauses_and_resumes(silero: object, piper_speech: dict[str, Speech]) -> None:
    p = new_pipeline(silero, TurnThresholds(min_barge_in_ms=400))
    p.detector.playout_started("agent", 0)
    out = run(p, with_silence(piper_speech["burst"].audio, 600, 1200))
    kinds = [type(d) for d in out if isinstance(d, PausePlayout | ResumePlayout | BargeIn | TurnEnded)]
    assert kinds == [PausePlayout, ResumePlayout]


async def test_smart_turn_tells_finished_from_unfinished(smart_turn: TurnModel,
                                                         piper_speech: dict[str, Speech]) -> None:
    finished = piper_speech["sentence"]
    unfinished = piper_speech["unfinished"]
    times: list[float] = []

    async def predict(s: Speech) -> bool:
        # what media hands the model: pre-roll, the speech, ~200 ms of silence
        audio = with_silence(s.audio[s.onset_ms * 16 : s.offset_ms * 16], 200, 200)
        result = await smart_turn.predict(audio)
        assert result is not None
        times.append(result.seconds * 1000)
        return result.complete

    assert await predict(finished) is True
    assert await predict(unfinished) is False
    for _ in range(4):
        await predict(finished)
    print(f"\nsmart-turn v3: median {statistics.median(times):.0f} ms per prediction (min {min(times):.0f})")
    assert statistics.median(times) < 500


def test_calls_sharing_the_model_keep_their_own_state(silero: Any, piper_speech: dict[str, Speech]) -> None:
    speech = with_silence(piper_speech["sentence"].audio, 300, 300)
    other = phone_band(speech[::-1].copy())
    alone = silero.stream()
    expected = [alone.probability(speech[i : i + 512]) for i in range(0, len(speech) - 511, 512)]
    a, b = silero.stream(), silero.stream()
    got = []
    for i in range(0, len(speech) - 511, 512):
        got.append(a.probability(speech[i : i + 512]))
        b.probability(other[i : i + 512])
    assert got == expected


def test_many_calls_scored_in_one_run_get_what_each_would_alone(silero: Any,
                                                                 piper_speech: dict[str, Speech]) -> None:
    """media scores the windows of every call that has one ready in one batched model run: each call's
    probabilities (and its recurrent state, over a whole utterance) are the ones it gets scored alone."""
    speech = with_silence(piper_speech["sentence"].audio, 300, 300)
    audios = [speech, phone_band(speech), speech[::-1].copy(), (speech // 4).astype(np.int16)]
    starts = range(0, len(speech) - 511, 512)
    alone = []
    for audio in audios:
        s = silero.stream()
        alone.append([s.probability(audio[i : i + 512]) for i in starts])
    streams = [silero.stream() for _ in audios]
    batched: list[list[float]] = [[] for _ in audios]
    for i in starts:
        for k, p in enumerate(silero.score_many(streams, [a[i : i + 512] for a in audios])):
            batched[k].append(p)
    for k in range(len(audios)):
        assert max(abs(x - y) for x, y in zip(batched[k], alone[k], strict=True)) < 1e-4, k
        assert max(batched[k]) > 0.5 or k == 2  # speech was heard (reversed speech may not sound like speech)
    assert batched[0] != batched[1]  # the rows are not mixed up: each call its own audio
