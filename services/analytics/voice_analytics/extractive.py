"""The deterministic post-call summary, used when the model fails or answers nothing usable (pure: no I/O).

- summary: the caller's first utterance (why they called), their last one when there are more, and the agent's last
  words, each cut to ``QUOTE_CHARS``, then the number of caller turns and how the call ended;
- disposition (a heuristic, from facts the platform has): ``no_conversation`` when the caller said nothing;
  ``transferred`` when the call ended in a transfer; ``dropped`` when it ended by a technical failure; ``unresolved``
  when the caller's rolling sentiment ended at or below -0.3; ``resolved`` when the agent ended the call (its
  ``end_call`` tool, after the goodbye); otherwise ``other``;
- tags: the caller's most frequent content words (at least 4 letters, not a stop word; ties in order of first use),
  at most 4, then ``negative_sentiment`` / ``positive_sentiment`` when the caller's rolling sentiment ended at or
  beyond -0.3 / 0.3.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from .summary import MAX_TAGS, Line, Summary

QUOTE_CHARS = 160
KEYWORDS = 4
SENTIMENT_TAG_AT = 0.3
FAILURES = frozenset({"error", "protocol_error", "connection_lost", "timeout", "shutdown", "no_agent"})
_WORD = re.compile(r"[a-z][a-z'-]{3,}")
STOP_WORDS = frozenset(
    """
    about above after again also been before being below between both cannot could does doing down during each
    from further have having here hers herself himself into itself just more most myself only other ours ourselves
    over own same should some such than that that's their theirs them themselves then there these they this those
    through under until very want wanted were what when where which while whom will with would your yours yourself
    yourselves okay yeah hello thanks thank please sure know like need right well good fine call calling today
    can't don't i'm it's you're we're they're i've i'll i'd let's
    """.split()
)


def summarize(lines: Sequence[Line], end_reason: str | None, caller_rolling: Sequence[float],
              reason: str) -> Summary:
    """The extractive summary of a call; ``reason`` says why the model's was not used."""
    caller = [ln.text.strip() for ln in lines if ln.speaker == "caller" and ln.text.strip()]
    agent = [ln.text.strip() for ln in lines if ln.speaker == "agent" and ln.text.strip()]
    end = caller_rolling[-1] if caller_rolling else None
    return Summary(
        summary=_summary_text(caller, agent, end_reason),
        disposition=_disposition(caller, end_reason, end),
        tags=_tags(caller, end),
        source="extractive",
        fallback_reason=reason,
    )


def _summary_text(caller: list[str], agent: list[str], end_reason: str | None) -> str:
    parts: list[str] = []
    if caller:
        parts.append(f'The caller said: "{_quote(caller[0])}"')
        if len(caller) > 1:
            parts.append(f'Their last words: "{_quote(caller[-1])}"')
    else:
        parts.append("The caller said nothing the agent could answer.")
    if agent:
        parts.append(f'The agent\'s last words: "{_quote(agent[-1])}"')
    turns = "1 caller turn" if len(caller) == 1 else f"{len(caller)} caller turns"
    parts.append(f"({turns}; ended: {end_reason or 'unknown'})")
    return " ".join(parts)


def _disposition(caller: list[str], end_reason: str | None, end: float | None) -> str:
    if not caller:
        return "no_conversation"
    if end_reason == "transferred":
        return "transferred"
    if end_reason in FAILURES:
        return "dropped"
    if end is not None and end <= -SENTIMENT_TAG_AT:
        return "unresolved"
    if end_reason == "agent_hangup":
        return "resolved"
    return "other"


def _tags(caller: list[str], end: float | None) -> tuple[str, ...]:
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for text in caller:
        for word in _WORD.findall(text.lower()):
            word = word.strip("'-")
            if len(word) < 4 or word in STOP_WORDS:
                continue
            counts[word] += 1
            first.setdefault(word, len(first))
    tags = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], first[kv[0]]))[:KEYWORDS]]
    if end is not None and end <= -SENTIMENT_TAG_AT:
        tags.append("negative_sentiment")
    elif end is not None and end >= SENTIMENT_TAG_AT:
        tags.append("positive_sentiment")
    return tuple(tags[:MAX_TAGS])


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1].rstrip() + "…"
