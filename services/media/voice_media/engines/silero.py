"""Voice activity with Silero VAD v5 (ONNX, the file shipped in pipecat).

Each call's ``SileroStream`` holds only its recurrent state; scoring a window allocates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from voice_runtime.realtime import report_threads

from .. import assets
from ..settings import MediaSettings
from ..vad import VadStream, VoiceActivity
from . import VOICE_ACTIVITY

# The model's recurrent state drifts during long non-speech (strongly on 8 kHz-origin phone audio)
# and then under-reports the next speech; pipecat resets it every ~2 s, only during clear
# non-speech (a run of low windows), never mid-word. Same rule here.
_RESET_INTERVAL_S = 2.0
_RESET_MAX_PROBABILITY = 0.1
_RESET_LOW_WINDOWS = 5


class SileroStream:
    """Per-call state of the Silero VAD: recurrent state plus the 64-sample context.

    Inputs and outputs are bound once to preallocated buffers (ONNX Runtime I/O binding), so scoring
    a window allocates nothing: the state ping-pongs between two buffers.
    """

    __slots__ = ("_bind", "_input", "_low", "_out", "_reset_after", "_session", "_since_reset", "_states",
                 "_turn", "_values", "_window")

    def __init__(self, session: ort.InferenceSession, sample_rate: int) -> None:
        self._session = session
        self._window = 512 if sample_rate == 16_000 else 256
        context = 64 if sample_rate == 16_000 else 32
        self._input = np.zeros((1, context + self._window), dtype=np.float32)
        self._states = (np.zeros((2, 1, 128), dtype=np.float32), np.zeros((2, 1, 128), dtype=np.float32))
        self._out = np.zeros((1, 1), dtype=np.float32)
        as_value = ort.OrtValue.ortvalue_from_numpy  # wraps the numpy memory, no copy on CPU
        self._values = (as_value(self._states[0]), as_value(self._states[1]))
        self._bind = session.io_binding()
        self._bind.bind_ortvalue_input("input", as_value(self._input))
        self._bind.bind_ortvalue_input("sr", as_value(np.array(sample_rate, dtype=np.int64)))
        self._bind.bind_ortvalue_output("output", as_value(self._out))
        self._turn = 0  # which state buffer is the current input
        self._since_reset = 0
        self._low = 0
        self._reset_after = int(_RESET_INTERVAL_S * sample_rate / self._window)

    def reset(self) -> None:
        self._states[self._turn].fill(0.0)
        self._input.fill(0.0)
        self._since_reset = 0

    def probability(self, window: np.ndarray) -> float:
        self._take(window)
        i = self._turn
        self._bind.bind_ortvalue_input("state", self._values[i])
        self._bind.bind_ortvalue_output("stateN", self._values[1 - i])
        self._session.run_with_iobinding(self._bind)
        self._turn = 1 - i
        return self._scored(float(self._out[0, 0]))

    def _take(self, window: np.ndarray) -> None:
        """The model's input row: the previous window's tail (context), then ``window`` as float."""
        buf = self._input
        w = self._window
        buf[0, : buf.shape[1] - w] = buf[0, w:]
        np.multiply(window, np.float32(1.0 / 32768.0), out=buf[0, buf.shape[1] - w :], casting="unsafe")

    def _scored(self, p: float) -> float:
        self._since_reset += 1
        self._low = self._low + 1 if p < _RESET_MAX_PROBABILITY else 0
        if self._since_reset >= self._reset_after and self._low >= _RESET_LOW_WINDOWS:
            self.reset()
        return p


class SileroVoiceActivity(VoiceActivity):
    """Silero VAD v5 from the ONNX file shipped in pipecat (16 kHz: 512-sample windows)."""

    name = "silero"

    def __init__(self, model_path: Path | None = None, *, sample_rate: int = 16_000) -> None:
        if sample_rate not in (8_000, 16_000):
            raise ValueError("Silero VAD runs at 8 or 16 kHz")
        super().__init__(sample_rate=sample_rate, window_samples=512 if sample_rate == 16_000 else 256)
        self.model_path = model_path
        self.session: ort.InferenceSession | None = None
        self._sr = np.array(sample_rate, dtype=np.int64)

    def load(self) -> None:
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1  # one window is tiny; threads only add hand-off latency
        opts.log_severity_level = 3
        path = self.model_path or assets.pipecat_file(assets.SILERO_VAD)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        report_threads("media", self.name, 1)

    def stream(self) -> SileroStream:
        if self.session is None:
            raise RuntimeError("the Silero model is not loaded (call start() first)")
        return SileroStream(self.session, self.sample_rate)

    def score_many(self, streams: Sequence[VadStream], windows: Sequence[np.ndarray]) -> list[float]:
        """One model run for the next window of each stream (batch rows: each stream's context and window in,
        its recurrent state in and back out), the same probabilities as one run each (tests/media/test_models)."""
        own = [s for s in streams if isinstance(s, SileroStream) and s._session is self.session]
        if len(streams) < 2 or len(own) != len(streams):
            return super().score_many(streams, windows)
        n, width = len(own), own[0]._input.shape[1]
        x = np.empty((n, width), dtype=np.float32)
        state = np.empty((2, n, 128), dtype=np.float32)
        for k, (s, w) in enumerate(zip(own, windows, strict=True)):
            s._take(w)
            x[k] = s._input[0]
            state[:, k, :] = s._states[s._turn][:, 0, :]
        assert self.session is not None
        out, state_n = self.session.run(None, {"input": x, "state": state, "sr": self._sr})
        probabilities: list[float] = []
        for k, s in enumerate(own):
            s._turn = 1 - s._turn
            s._states[s._turn][:, 0, :] = state_n[:, k, :]
            probabilities.append(s._scored(float(out[k, 0])))
        return probabilities


def create(settings: MediaSettings) -> SileroVoiceActivity:
    return SileroVoiceActivity()


VOICE_ACTIVITY.register("silero", create)
