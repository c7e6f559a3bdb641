"""The turn model runs below the event loop's priority: a prediction is model inference, VAD is real time."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from voice_media.settings import MediaSettings
from voice_media.turn_model import TurnModel, TurnPrediction

pytestmark = pytest.mark.unit


class _NiceProbe(TurnModel):
    """Answers with the nice value of the thread it predicted on (as the probability)."""

    @property
    def name(self) -> str:
        return "nice_probe"

    def _predict(self, audio: np.ndarray) -> TurnPrediction:
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return TurnPrediction(True, float(nice), time.perf_counter())


async def test_predictions_run_nicer_than_the_event_loop_by_the_setting() -> None:
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    steps = MediaSettings().turn_model_nice
    assert steps > 0, "the default lowers the turn model's priority"
    model = _NiceProbe(nice=steps)
    try:
        prediction = await model.predict(np.zeros(16_000, dtype=np.int16))
        assert prediction is not None
        assert prediction.probability == min(19, loop_nice + steps)
        # the loop's own thread (VAD, the bus) keeps its priority
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice
    finally:
        model.close()


async def test_nice_zero_leaves_the_priority_alone() -> None:
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    model = _NiceProbe(nice=0)
    try:
        prediction = await model.predict(np.zeros(16_000, dtype=np.int16))
        assert prediction is not None and prediction.probability == loop_nice
    finally:
        model.close()
