"""media's VAD batch (``voice_media.service.VadBatch``): the windows ready in one pass of the event loop are scored
in one model run, each call's decisions are the ones it gets scored frame by frame, and a failed run stalls
nobody."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from voice_media.call import CallPipeline
from voice_media.service import VadBatch
from voice_media.turns import DetectorParams, TurnDetector, TurnThresholds
from voice_media.vad import VadStream

from .fakes import LoudnessVad, quiet, tone

pytestmark = pytest.mark.unit

FRAME = 320  # 20 ms at 16 kHz


class CountingVad(LoudnessVad):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail = fail

    def score_many(self, streams: Sequence[VadStream], windows: Sequence[np.ndarray]) -> list[float]:
        self.batches.append(len(streams))
        if self.fail:
            raise RuntimeError("the model run failed")
        return super().score_many(streams, windows)


class Call:
    """What the batch needs of a MediaCall: an id, its pipeline, and where its decisions go."""

    def __init__(self, call_id: str, vad: LoudnessVad) -> None:
        self.call_id, self.closed = call_id, False
        self.pipeline = CallPipeline(vad.stream(), TurnDetector(TurnThresholds(), DetectorParams(use_turn_model=False)))
        self.decisions: list[Any] = []

    def handle(self, decisions: list[Any]) -> None:
        self.decisions += decisions


def same(decisions: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Decisions without their random ids."""
    return [(type(d).__name__, {k: v for k, v in dataclasses.asdict(d).items() if not k.endswith("_id")})
            for d in decisions]


def frames(audio: np.ndarray) -> list[bytes]:
    return [audio[i : i + FRAME].tobytes() for i in range(0, len(audio) - FRAME + 1, FRAME)]


def fill(call: Call, ms: int) -> None:
    """``ms`` of quiet audio into the call's pipeline (its windows ready, not yet scored)."""
    for f in frames(quiet(ms)):
        call.pipeline.append(f)


def utterance(k: int) -> np.ndarray:
    return np.concatenate([quiet(200 + 40 * k), tone(800), quiet(1500)])


async def test_windows_ready_in_one_pass_are_one_run_with_each_calls_own_decisions() -> None:
    vad = CountingVad()
    batch = VadBatch(vad)
    calls = [Call(f"c{k}", vad) for k in range(5)]
    alone = []
    for k in range(5):  # the same audio, scored frame by frame
        solo = Call(f"solo{k}", LoudnessVad())
        alone.append([d for f in frames(utterance(k)) for d in solo.pipeline.push(f, None)])
    per_call = [frames(utterance(k)) for k in range(5)]
    for i in range(len(per_call[0])):
        for call, fs in zip(calls, per_call, strict=True):  # one frame of every call, then the loop turns
            if call.pipeline.append(fs[i]) and call.pipeline.has_window:
                batch.add(call)  # type: ignore[arg-type]
        await asyncio.sleep(0)
    assert max(vad.batches) == 5, vad.batches  # every call's window in the same run
    assert batch.windows == sum(vad.batches) and batch.runs == len(vad.batches) < batch.windows
    for call, expected in zip(calls, alone, strict=True):
        assert same(call.decisions) == same(expected) and expected, call.call_id  # a turn began and ended, as alone


async def test_a_call_with_a_burst_of_windows_gets_them_all_one_per_run() -> None:
    vad = CountingVad()
    batch = VadBatch(vad)
    late, steady = Call("late", vad), Call("steady", vad)
    for f in frames(utterance(0))[:20]:  # 400 ms arrived at once: 12 windows
        late.pipeline.append(f)
    steady.pipeline.append(frames(utterance(0))[0])
    steady.pipeline.append(frames(utterance(0))[1])
    batch.add(late)  # type: ignore[arg-type]
    batch.add(steady)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert late.pipeline.window() is None and steady.pipeline.window() is None  # all scored in that pass
    assert vad.batches == [2] + [1] * 11 and batch.windows == 13


async def test_a_failed_run_scores_silence_and_the_calls_go_on() -> None:
    vad = CountingVad(fail=True)
    batch = VadBatch(vad)
    calls = [Call(f"c{k}", vad) for k in range(3)]
    for call in calls:
        fill(call, 100)
        batch.add(call)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert all(c.pipeline.window() is None for c in calls)  # consumed, nothing left waiting
    assert vad.batches == [3, 3, 3] and batch.windows == 9 and not any(c.decisions for c in calls)


async def test_with_many_calls_windows_wait_for_a_larger_run_and_with_few_they_do_not() -> None:
    # windows ready in passes a few milliseconds apart: with enough calls they wait (up to VAD_BATCH_WAIT_MS) and
    # share a run; below VAD_BATCH_WAIT_FROM_CALLS each is scored in its own pass, as without the wait
    for active, expected in ((8, [4]), (2, [1, 1, 1, 1])):
        vad = CountingVad()
        batch = VadBatch(vad, wait_s=0.5, wait_from_calls=8, calls=lambda n=active: n)  # type: ignore[misc]
        calls = [Call(f"c{k}", vad) for k in range(4)]
        for call in calls:
            fill(call, 40)
            batch.add(call)  # type: ignore[arg-type]
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.6)
        assert vad.batches == expected and all(c.pipeline.window() is None for c in calls)
