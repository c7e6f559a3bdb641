"""End-of-turn model: the ``TurnModel`` role and its smart-turn v3 (ONNX) implementation.

A prediction takes tens of milliseconds of CPU, so callers run ``predict`` in a worker thread,
never on the event loop. One model instance serves every call of the process (ONNX Runtime
sessions are safe to run from several threads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from . import assets


@dataclass(frozen=True, slots=True)
class TurnPrediction:
    complete: bool
    probability: float
    seconds: float  # inference time (features + model)


class TurnModel(Protocol):
    name: str

    def predict(self, audio: np.ndarray) -> TurnPrediction:
        """``audio``: the turn so far, int16 mono 16 kHz, ending with the current silence. Blocking."""
        ...


class SmartTurnV3:
    """Pipecat's smart-turn v3.2 (Whisper-tiny encoder, 8 s context), CPU ONNX, no torch."""

    name = "smart_turn_v3"
    SAMPLE_RATE = 16_000
    CONTEXT_SAMPLES = 8 * SAMPLE_RATE

    def __init__(self, model_path: Path | None = None, *, threads: int = 1, threshold: float = 0.5) -> None:
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        path = model_path or assets.pipecat_file(assets.SMART_TURN_V3)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.threshold = threshold
        self._features = assets.whisper_log_mel()

    def predict(self, audio: np.ndarray) -> TurnPrediction:
        started = time.perf_counter()
        x = audio[-self.CONTEXT_SAMPLES :].astype(np.float32) / 32768.0
        if x.size < self.CONTEXT_SAMPLES:  # the model expects 8 s, silence in front
            x = np.pad(x, (self.CONTEXT_SAMPLES - x.size, 0))
        features = self._features(x, do_normalize=True)[np.newaxis, ...]
        (out,) = self.session.run(None, {"input_features": features})
        probability = float(np.asarray(out).reshape(-1)[0])
        return TurnPrediction(probability > self.threshold, probability, time.perf_counter() - started)

    def warm_up(self) -> None:
        """First run initialises ONNX Runtime's kernels; do it before the first caller waits on it."""
        self.predict(np.zeros(self.SAMPLE_RATE, dtype=np.int16))
