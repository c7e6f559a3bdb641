"""A call's post-call summary: what it is, the prompt that asks a model for it, and how the model's answer is judged
(pure: no I/O). ``summarizer.py`` calls the model; ``extractive.py`` is the deterministic fallback.

The prompt is bounded: each utterance is cut to ``MAX_LINE_CHARS`` and the transcript to a character budget,
keeping its first third and last two thirds (how the call opened and how it ended) with a marker for what was
left out. The model is asked for one JSON object; an answer is usable when a JSON object can be found in it
(code fences and prose around it are tolerated) with a non-empty ``summary``. Its ``disposition`` is taken when it
is one of ``DISPOSITIONS`` (after lower-casing, spaces as underscores), else ``other``; ``tags`` are normalised
(lower case, trimmed, at most ``MAX_TAGS`` of at most ``MAX_TAG_CHARS``, duplicates dropped).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Speaker = Literal["caller", "agent"]
Source = Literal["llm", "extractive"]

DISPOSITIONS: tuple[str, ...] = (
    "resolved",  # the caller got what they called for
    "unresolved",  # they did not
    "transferred",  # handed to a person or another number
    "callback",  # a follow-up was promised or asked for
    "abandoned",  # the caller left before their request was handled
    "no_conversation",  # nobody said anything the agent could answer
    "dropped",  # cut off by a technical failure
    "other",
)
MAX_SUMMARY_CHARS = 1000
MAX_TAGS = 5
MAX_TAG_CHARS = 40
MAX_LINE_CHARS = 500


@dataclass(frozen=True)
class Line:
    speaker: Speaker
    text: str


@dataclass(frozen=True)
class Summary:
    summary: str
    disposition: str
    tags: tuple[str, ...]
    source: Source
    fallback_reason: str | None = None  # why the extractive summary was used (no transcript text, never a key)


class Unusable(ValueError):
    """The model's answer holds no usable summary."""


SYSTEM_PROMPT = (
    "You summarise a finished phone call between a caller and an AI agent for the company's records. "
    "Reply with only one JSON object and nothing else, of this shape: "
    '{"summary": "<at most 3 sentences: why the caller called and how it ended>", '
    f'"disposition": "<exactly one of: {", ".join(DISPOSITIONS)}>", '
    f'"tags": ["<up to {MAX_TAGS} short lowercase topic tags>"]}}'
)


def transcript_text(lines: Sequence[Line], budget: int) -> str:
    """The transcript as ``Caller: ...`` / ``Agent: ...`` lines within ``budget`` characters."""
    rendered = [f"{'Caller' if ln.speaker == 'caller' else 'Agent'}: {_cut(ln.text, MAX_LINE_CHARS)}" for ln in lines]
    if sum(len(r) + 1 for r in rendered) <= budget:
        return "\n".join(rendered)
    head_budget, tail_budget = budget // 3, budget - budget // 3 - 40
    head: list[str] = []
    used = 0
    for r in rendered:
        if used + len(r) + 1 > head_budget:
            break
        head.append(r)
        used += len(r) + 1
    tail: list[str] = []
    used = 0
    for r in reversed(rendered[len(head):]):
        if used + len(r) + 1 > tail_budget:
            break
        tail.append(r)
        used += len(r) + 1
    omitted = len(rendered) - len(head) - len(tail)
    return "\n".join([*head, f"[... {omitted} lines left out ...]", *reversed(tail)])


def messages_of(lines: Sequence[Line], end_reason: str | None, budget: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"How the call ended: {end_reason or 'unknown'}.\nTranscript:\n"
                                    f"{transcript_text(lines, budget)}"},
    ]


def parse_answer(content: str | None) -> Summary:
    """The model's answer as a ``Summary`` (source ``llm``); ``Unusable`` when it holds none."""
    obj = _json_object(content or "")
    summary = obj.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise Unusable("the answer has no summary")
    return Summary(
        summary=_cut(" ".join(summary.split()), MAX_SUMMARY_CHARS),
        disposition=disposition_of(obj.get("disposition")),
        tags=tags_of(obj.get("tags")),
        source="llm",
    )


def disposition_of(value: Any) -> str:
    if not isinstance(value, str):
        return "other"
    d = "_".join(value.strip().lower().replace("-", " ").split())
    return d if d in DISPOSITIONS else "other"


def tags_of(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    out: list[str] = []
    for v in value:
        if not isinstance(v, str):
            continue
        tag = " ".join(v.strip().lower().split())[:MAX_TAG_CHARS].strip()
        if tag and tag not in out:
            out.append(tag)
        if len(out) == MAX_TAGS:
            break
    return tuple(out)


def _json_object(content: str) -> dict[str, Any]:
    text = re.sub(r"```(?:json)?", "", content)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise Unusable("the answer holds no JSON object")
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError as e:
        raise Unusable(f"the answer's JSON does not parse (at character {e.pos})") from e
    if not isinstance(obj, dict):
        raise Unusable("the answer's JSON is not an object")
    return obj


def _cut(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"
