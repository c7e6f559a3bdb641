"""End of turn with pipecat's smart-turn v3.2 (ONNX, CPU, no torch).

Its settings are read from the same variables as always (``TURN_MODEL_THRESHOLD``, ``TURN_MODEL_THREADS``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from voice_runtime.realtime import report_threads

from .. import assets
from ..settings import MediaSettings
from ..turn_model import TurnModel, TurnPrediction
from . import TURN_MODELS


class SmartTurnSettings(BaseSettings):
    """smart-turn's settings (environment variables of the same names, upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    turn_model_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Probability that means 'complete'")
    turn_model_threads: int = Field(1, ge=1, le=16, description="ONNX intra-op threads per prediction")


class SmartTurnV3(TurnModel):
    """Pipecat's smart-turn v3.2 (Whisper-tiny encoder, 8 s context), CPU ONNX, no torch. ONNX Runtime sessions
    are safe to run from several threads."""

    SAMPLE_RATE = 16_000
    CONTEXT_SAMPLES = 8 * SAMPLE_RATE

    def __init__(self, options: SmartTurnSettings | None = None, *, model_path: Path | None = None,
                 workers: int = 1, max_queue: int = 8, timeout_s: float = 2.0, nice: int = 0) -> None:
        super().__init__(workers=workers, max_queue=max_queue, timeout_s=timeout_s, nice=nice)
        self.options = options or SmartTurnSettings()
        self.model_path = model_path
        self.threshold = self.options.turn_model_threshold
        self.session: ort.InferenceSession | None = None

    @property
    def name(self) -> str:
        return "smart_turn_v3"

    def load(self) -> None:
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = self.options.turn_model_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        path = self.model_path or assets.pipecat_file(assets.SMART_TURN_V3)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        report_threads("media", self.name, self.options.turn_model_threads)
        self._features = assets.whisper_log_mel()
        self.warm_up()

    def _predict(self, audio: np.ndarray) -> TurnPrediction:
        if self.session is None:
            raise RuntimeError("the smart-turn model is not loaded (call start() first)")
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
        self._predict(np.zeros(self.SAMPLE_RATE, dtype=np.int16))


def create(settings: MediaSettings) -> SmartTurnV3:
    return SmartTurnV3(SmartTurnSettings(), workers=settings.turn_model_workers,
                       max_queue=settings.turn_model_max_queue, timeout_s=settings.turn_model_timeout_s,
                       nice=settings.turn_model_nice)


TURN_MODELS.register("smart-turn-v3", create)
