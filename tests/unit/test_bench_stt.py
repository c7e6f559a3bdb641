"""The STT bench's scoring: numbers said and written score alike, edits are counted per word."""

from __future__ import annotations

import pytest

from bench.stt_accuracy import SENTENCES, edits, normalize, number_words

pytestmark = pytest.mark.unit


def test_numbers_written_or_spoken_normalise_alike() -> None:
    assert normalize("It costs 45 dollars.") == normalize("it costs forty-five dollars")
    assert normalize("at 7:30 tonight") == ["at", "seven", "thirty", "tonight"]
    assert normalize("March 14th, 1987") == ["march", "fourteenth", "nineteen", "eighty", "seven"]
    assert normalize("90210") == ["ninety", "thousand", "two", "hundred", "ten"]
    assert number_words(221) == ["two", "hundred", "twenty", "one"]
    assert number_words(2000) == ["two", "thousand"]
    assert normalize("Is it open until 9 p.m.?") == normalize("is it open until nine pm")
    assert normalize("0192") == ["zero", "one", "nine", "two"]


def test_edits_count_substitutions_insertions_and_deletions() -> None:
    assert edits(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert edits(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert edits(["a", "b", "c"], ["a", "c"]) == 1
    assert edits(["a", "b"], ["a", "b", "c", "d"]) == 2
    assert edits([], ["a"]) == 1


def test_the_set_is_large_enough() -> None:
    assert len(SENTENCES) >= 30 and len(set(SENTENCES)) == len(SENTENCES)
    assert sum(any(ch.isdigit() for ch in s) for s in SENTENCES) >= 10  # numbers are a third of it
