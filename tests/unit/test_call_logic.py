"""Pure logic of the call path: sentence chunking (ingress playout and codecs: tests/ingress)."""

from __future__ import annotations

import pytest
from voice_brain.chunking import SentenceChunker

pytestmark = pytest.mark.unit


def chunk(tokens: list[str]) -> tuple[list[str], str]:
    c = SentenceChunker()
    out: list[str] = []
    for tok in tokens:
        out += c.push(tok)
    return out, c.flush()


def test_sentence_chunker_emits_complete_sentences_early() -> None:
    c = SentenceChunker()
    assert c.push("Hello there! We") == ["Hello there!"]  # out before the rest of the reply streams
    assert c.push(" open at eight. And") == ["We open at eight."]
    assert c.flush() == "And"


def test_sentence_chunker_does_not_split_inside_a_m() -> None:
    out, rest = chunk(["Hello", " there", "! We", " open", " at 8 a", ".m. tomorrow", ". Anything", " else?"])
    assert out == ["Hello there!", "We open at 8 a.m. tomorrow."] and rest == "Anything else?"


def test_sentence_chunker_waits_for_the_word_after_an_abbreviation() -> None:
    c = SentenceChunker()
    assert c.push("We open at 8 a.m. ") == []  # "tomorrow" or "See": not known until the next token
    assert c.push("tomorrow, and close at 5 p.m. ") == []
    assert c.push("See you then! ") == ["We open at 8 a.m. tomorrow, and close at 5 p.m.", "See you then!"]


@pytest.mark.parametrize("text", ["Please ask for Dr. Jones at the front desk.", "Prices, e.g. the croissant, went up.",
                                  "Bring flour, sugar, etc. and eggs."])
def test_sentence_chunker_keeps_abbreviations_inside_the_sentence(text: str) -> None:
    out, rest = chunk([text[i:i + 3] for i in range(0, len(text), 3)] + [" Thanks!"])
    assert out == [text] and rest == "Thanks!"


def test_sentence_chunker_merges_tiny_fragments() -> None:
    c = SentenceChunker()
    assert c.push("Hi. ") == []  # too short alone: merged with what follows
    assert c.push("How can I help you today? ") == ["Hi. How can I help you today?"]
