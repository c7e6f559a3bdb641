"""Pure logic of the call path: sentence chunking (ingress playout and codecs: tests/ingress)."""

from __future__ import annotations

import pytest
from voice_brain.chunking import SentenceChunker

pytestmark = pytest.mark.unit


def test_sentence_chunker_emits_complete_sentences_early() -> None:
    c = SentenceChunker()
    out: list[str] = []
    for tok in ["Hello", " there", "! We", " open", " at 8 a", ".m. tomorrow", ". Anything", " else?"]:
        out += c.push(tok)
    assert out[0] == "Hello there!" or out[0].startswith("Hello there! We open")
    assert c.flush().endswith("else?")
    assert " ".join(out) .startswith("Hello there!")


def test_sentence_chunker_merges_tiny_fragments() -> None:
    c = SentenceChunker()
    assert c.push("Hi. ") == []  # too short alone: merged with what follows
    assert c.push("How can I help you today? ") == ["Hi. How can I help you today?"]
