"""Speech to text with Moonshine base (English, MIT) on onnxruntime: the cost follows the utterance's length.

Whisper encodes 30 s of audio for every utterance; Moonshine's encoder takes the audio as it is (16 kHz float,
any length from 0.1 s), so a 2 s "yes, please" costs a fraction of a 10 s sentence. Measured on 2 cores beside
faster-whisper tiny.en beam 5 on the same phone clips: 0.14-0.15 of its time, word error rate 3.1% against 4.7%
(``../shared/design/FACTS.md``). That makes re-decoding the growing utterance for partial transcripts affordable,
so this engine publishes partials by default (``STT_PARTIALS``).

The weights are the int8 graphs bundled in ``moonshine-cpp``, converted once into fast graphs and cached under the
state dir (``moonshine_models.py``; never at call time). Decoding is greedy with a key/value cache, capped at
``MOONSHINE_TOKENS_PER_SECOND`` tokens per second of audio (a decoder that loops on noise stops there).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from voice_runtime.logging import get_logger
from voice_runtime.paths import state_dir
from voice_runtime.realtime import report_threads

from ..engine import SpeechToText, Transcription, words_or_nothing
from ..settings import SttSettings
from . import ENGINES
from .moonshine_models import prepared_model, tokenizer_path
from .whisper import WHISPER_RATE, _language_code, pcm16_to_float

log = get_logger(__name__)

RATE = WHISPER_RATE  # 16 kHz, as whisper
# the encoder needs at least this much audio to produce one frame (its convolutions' receptive field)
MIN_SAMPLES = RATE // 10
# longer audio is decoded in windows of this length and the texts joined (the model was trained on <= 64 s)
WINDOW_SAMPLES = 30 * RATE


def repeated_tail(tokens: list[int], *, max_period: int = 24) -> int:
    """How many trailing tokens are a loop to drop: a run of ``n`` >= 3 tokens said three times in a row (or one
    token six times) ends ``tokens``; the count of the extra copies, else 0. Legitimate repeats ("five five
    five", "no no no") stay: they are single tokens said fewer than six times."""
    size = len(tokens)
    if size >= 6 and len(set(tokens[-6:])) == 1:
        return 5
    for period in range(3, min(max_period, size // 3) + 1):
        last = tokens[-period:]
        if tokens[-2 * period : -period] == last and tokens[-3 * period : -2 * period] == last:
            return 2 * period
    return 0


class MoonshineSettings(BaseSettings):
    """Moonshine's settings (environment variables of the same names, upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    moonshine_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="onnxruntime threads per transcription. 1 suits 2 cores: a decoder step is too small to gain "
        "from a second thread (measured: 1 thread as fast as 2 on a 3.8 s utterance) and the other core stays "
        "free for real-time audio (media VAD, ingress playout); raise it with cores to spare",
    )
    moonshine_tokens_per_second: float = Field(
        13.0, gt=0, le=50, description="Most tokens decoded per second of audio (speech runs at ~3-5)"
    )
    moonshine_min_tokens: int = Field(6, ge=1, le=64, description="Token cap floor for very short audio")
    state_dir: Path | None = Field(
        None, description="Where the converted model is kept (STATE_DIR; default: the platform's .state/)"
    )
    moonshine_models_dir: Path | None = Field(
        None, description="Folder of the converted model, if not $STATE_DIR/models (e.g. a volume shared by replicas)"
    )


class MoonshineModel:
    """The two onnxruntime sessions and the greedy decode loop of the reference implementation
    (``moonshine_onnx.model``), with the output capped and the KV cache kept between steps."""

    LAYERS, HEADS, HEAD_DIM = 8, 8, 52
    START, END = 1, 2

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime as ort

        def session(path: Path) -> Any:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            # idle worker threads spin for a while by default: on 2 cores that takes CPU from real-time audio
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        self.encoder = session(model_dir / "encoder_model.onnx")
        self.decoder = session(model_dir / "decoder_model_merged.onnx")
        self._present = [o.name for o in self.decoder.get_outputs()][1:]
        self._past = [n.replace("present.", "past_key_values.", 1) for n in self._present]
        inputs = {i.name for i in self.decoder.get_inputs()}
        missing = {"input_ids", "encoder_hidden_states", "use_cache_branch", *self._past} - inputs
        if missing:
            raise RuntimeError(f"the Moonshine decoder lacks the inputs {sorted(missing)[:4]}")

    def generate(self, audio: np.ndarray, max_tokens: int) -> tuple[list[int], float | None]:
        """Greedy decode of float32 16 kHz ``audio``: the tokens (without start/end) and their mean log-probability."""
        hidden = self.encoder.run(None, {"input_values": audio[np.newaxis, :]})[0]
        empty = np.zeros((1, self.HEADS, 0, self.HEAD_DIM), dtype=np.float32)
        past: dict[str, np.ndarray] = dict.fromkeys(self._past, empty)
        ids = np.array([[self.START]], dtype=np.int64)
        tokens: list[int] = []
        logprob, steps = 0.0, 0
        for step in range(max_tokens):
            outputs = self.decoder.run(
                None,
                {
                    "input_ids": ids,
                    "encoder_hidden_states": hidden,
                    "use_cache_branch": np.array([step > 0]),
                    **past,
                },
            )
            logits = outputs[0][0, -1]
            token = int(logits.argmax())
            top = float(logits[token])
            logprob += -math.log(float(np.exp(logits - top).sum()))  # log-softmax of the chosen token
            steps += 1
            if token == self.END:
                break
            tokens.append(token)
            loop = repeated_tail(tokens)
            if loop:  # the decoder is looping (audio cut mid-word, noise): keep one copy and stop
                del tokens[-loop:]
                break
            ids = np.array([[token]], dtype=np.int64)
            for name, value in zip(self._past, outputs[1:], strict=True):
                # the cross-attention keys/values depend on the audio only: computed at the first step, then kept
                if step == 0 or ".decoder." in name:
                    past[name] = value
        return tokens, (logprob / steps) if steps else None


class MoonshineSpeechToText(SpeechToText):
    """Moonshine base, loaded once by ``load``; ``_transcribe`` is safe from up to ``workers`` threads at once
    (onnxruntime sessions are thread-safe; each call keeps its own KV cache)."""

    partials_by_default: ClassVar[bool] = True

    def __init__(self, options: MoonshineSettings | None = None, *, workers: int = 1, timeout_s: float = 25.0) -> None:
        super().__init__(workers=workers, timeout_s=timeout_s)
        self.options = options or MoonshineSettings()
        self._model: MoonshineModel | None = None
        self._tokenizer: Any = None
        self._warned_languages: set[str] = set()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return "moonshine:base"

    def load(self) -> None:
        """Convert once (cached), load and warm up."""
        import tokenizers

        o = self.options
        model_dir = prepared_model(o.moonshine_models_dir or (o.state_dir or state_dir()) / "models", isolated=True)
        self._tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path()))
        self._model = MoonshineModel(model_dir, o.moonshine_threads)
        self.warm_up()
        log.info("stt_model_loaded", model=self.model_name, path=str(model_dir), threads=o.moonshine_threads)
        report_threads("stt", "moonshine", o.moonshine_threads)

    def max_tokens(self, samples: int) -> int:
        o = self.options
        return max(o.moonshine_min_tokens, math.ceil(samples / RATE * o.moonshine_tokens_per_second))

    def _check_language(self, language: str | None) -> None:
        code = _language_code(language)
        if code is None or code == "en":
            return
        with self._lock:
            if code not in self._warned_languages:
                self._warned_languages.add(code)
                log.warning("stt_language_unsupported", language=code, model=self.model_name)

    def _transcribe(self, pcm16: bytes, sample_rate: int, language: str | None) -> Transcription:
        model, tokenizer = self._model, self._tokenizer
        if model is None or tokenizer is None:
            raise RuntimeError("the Moonshine model is not loaded (call start() first)")
        self._check_language(language)  # English only: other languages are transcribed as English (badly)
        audio = pcm16_to_float(pcm16, sample_rate)
        duration = audio.size / RATE
        texts: list[str] = []
        logprobs: list[float] = []
        for start in range(0, audio.size, WINDOW_SAMPLES):
            window = audio[start : start + WINDOW_SAMPLES]
            if window.size < MIN_SAMPLES:  # too short to hold a word (and below the encoder's minimum)
                continue
            tokens, logprob = model.generate(np.ascontiguousarray(window), self.max_tokens(window.size))
            text = words_or_nothing(tokenizer.decode(tokens)) if tokens else ""
            if text:
                texts.append(text)
            if logprob is not None:
                logprobs.append(logprob)
        return Transcription(
            text=" ".join(texts),
            language="en",
            duration_s=duration,
            avg_logprob=float(np.mean(logprobs)) if logprobs else None,
        )

    def warm_up(self) -> None:
        """One throwaway decode so the first caller does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(RATE) * 300).astype("<i2").tobytes()
        self._transcribe(noise, RATE, "en")


def create(settings: SttSettings) -> MoonshineSpeechToText:
    return MoonshineSpeechToText(
        MoonshineSettings(), workers=settings.stt_concurrency, timeout_s=settings.stt_timeout_s
    )


ENGINES.register("moonshine", create)
