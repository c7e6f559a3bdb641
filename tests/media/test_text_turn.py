"""Whether the caller's words sound finished (``text_turn.sounds_finished``), English examples."""

from __future__ import annotations

import pytest
from voice_media.text_turn import sounds_finished

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text", [
    "I would like to book a table for",
    "my number is",
    "Can I speak to the",
    "I'd like a pizza and",
    "um",
    "So I was thinking, um",
    "I was wondering if you could",
    "I need it by Friday, or",
    "I want to book a table for.",  # a transcriber's full stop after a dangling word
    "Let me think...",
    "Let me think\u2026",
    "Well, the thing is,",  # a trailing comma: the last word decides
    "I'd like to pay by card and,",
    "We will be there at around",  # unpunctuated: a preposition that may stand alone still expects more
    "We are four -",
    "Yes I can",  # unpunctuated: an auxiliary usually needs more
    "I'll be there at",
    "  and  ",
    # Moonshine's own punctuation of the bench's broken-off sentences (2026-12-03)
    "We will be there at around.",  # two prepositions: a time follows
    "We will be there at around",
    "Can you come for about.",
    "Could you tell me if you have?",  # an embedded question's verb without its object, question mark or not
    "Could you tell me if you have.",
    "I wonder whether they are.",
    "I would like.",  # wanting, after its subject or a modal
    "We really need.",
    "I'd want.",
])
def test_unfinished(text: str) -> None:
    assert sounds_finished(text) is False


@pytest.mark.parametrize("text", [
    "What time do you open?",
    "Yes.",
    "Yes",
    "Thank you!",
    "What is it for?",  # a question ends on a preposition
    "Yes it is.",  # punctuated: the auxiliary closes an elliptical answer
    "I think so.",
    "I'd like to book a table for four",
    "My number is 555 0134",
    "Mm-hmm",
    "Two people at seven o'clock",
    '"That works."',
    "Sunday",  # Moonshine: no punctuation, a plain content word
    "What do you have?",  # a question ending on an auxiliary: no "if" before it
    "Do you have a table if we come at eight?",
    "If you have one, yes.",  # "if" long before the end
    "What is it about?",  # two words that may be prepositions, but a question
    "Would you like?",
    "I like it.",
    "Tell them what you need, please.",
    "I can do whatever you like.",  # wanting whose clause already has its object
    "Sure, if you want.",
])
def test_finished(text: str) -> None:
    assert sounds_finished(text) is True


@pytest.mark.parametrize("text", ["", "   ", "...", "?!", "\u2014"])
def test_no_words_is_no_answer(text: str) -> None:
    assert sounds_finished(text) is None


@pytest.mark.parametrize("text", [
    "How much does a large pizza cost,",  # Moonshine at a pause: a comma where the question had ended
    "Is there parking near the restaurant,",
    "So I was wondering,",  # ... and where it goes on: the model and the hangover decide
])
def test_a_trailing_comma_after_a_content_word_tells_nothing(text: str) -> None:
    assert sounds_finished(text) is None
