"""Whisper in a shorter encoder window (``STT_WHISPER_WINDOW_S``): the real tiny.en model on phone audio hears
what it hears in the 30 s window it was trained on, encoding a window of the utterance's length + 10 s instead."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from voice_devstack.speech import phone_line_pcm16, word_error_rate
from voice_stt.engines.whisper import FULL_WINDOW_FRAMES, WhisperSettings, WhisperSpeechToText

pytestmark = pytest.mark.integration

SENTENCES = [
    "I would like to book a table for two people tomorrow at seven.",
    "My account number is 4 7 2 9 1 5.",
    "Yes, that is correct.",
    "Can you send the invoice to my office on Baker Street?",
]


def loaded(window_s: float) -> Iterator[tuple[WhisperSpeechToText, list[int]]]:
    """The engine and the width (mel frames) of every window its encoder was given."""
    stt = WhisperSpeechToText(WhisperSettings(stt_model="tiny.en", stt_cpu_threads=2, stt_whisper_window_s=window_s))
    stt.load()
    widths: list[int] = []
    model: Any = stt._model
    encode = model.encode

    def spy(features: np.ndarray) -> Any:
        widths.append(int(features.shape[-1]))
        return encode(features)

    model.encode = spy
    try:
        yield stt, widths
    finally:
        stt.close()


@pytest.fixture(scope="module")
def full() -> Iterator[tuple[WhisperSpeechToText, list[int]]]:
    yield from loaded(30.0)


@pytest.fixture(scope="module")
def short() -> Iterator[tuple[WhisperSpeechToText, list[int]]]:
    yield from loaded(15.0)


def test_a_15_s_window_hears_phone_speech_as_the_30_s_one_does(full: Any, short: Any) -> None:
    (whole, whole_widths), (brief, brief_widths) = full, short
    whole_widths.clear()
    brief_widths.clear()
    rows = []
    for text in SENTENCES:
        clip = phone_line_pcm16(text)  # 8 kHz PCM16 through μ-law, as a phone call carries it
        rows.append((word_error_rate(text, whole._transcribe(clip, 8_000, "en").text),
                     word_error_rate(text, brief._transcribe(clip, 8_000, "en").text)))
    assert whole_widths == [FULL_WINDOW_FRAMES] * len(SENTENCES)  # transcribe pads to 30 s
    assert brief_widths == [1500] * len(SENTENCES)  # these utterances are all under 5 s
    wer_full, wer_short = (float(np.mean(col)) for col in zip(*rows, strict=True))
    assert wer_short <= 0.2 and wer_short <= wer_full + 0.1, rows


def test_the_window_follows_the_utterance_and_never_exceeds_30_s(short: Any) -> None:
    stt, _ = short
    second = 16_000
    assert stt.window_frames(2 * second) == 1500  # the setting's floor
    assert stt.window_frames(12 * second) == 2202  # 12 s + 10 s of padding (1,201 mel frames + 1,000, even)
    assert stt.window_frames(25 * second) == FULL_WINDOW_FRAMES
    assert stt.window_frames(40 * second) == FULL_WINDOW_FRAMES


def test_silence_in_a_short_window_is_no_words(short: Any) -> None:
    stt, _ = short
    silence = np.zeros(16_000, dtype="<i2").tobytes()
    assert asyncio.run(stt.transcribe(silence, 16_000, "en")).text == ""  # as the service asks: words or nothing
