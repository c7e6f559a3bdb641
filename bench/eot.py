"""The end-of-turn phase of `make bench`: how long the platform waits after each kind of caller utterance before it
answers, whether it cuts off a caller who pauses mid-sentence, and how often the reply was begun early (on the
likely-final transcript, before the end of turn was decided).

Kinds (each spoken by the bench's piper caller voice as Twilio μ-law, one at a time, the reply heard out):

- ``question``: a complete question ("What time do you open tomorrow morning?");
- ``statement``: a complete statement ("I would like a table for four people tonight.");
- ``short``: a one- or two-word answer ("Yes, please.");
- ``paused``: a sentence broken off after a dangling word, a pause of ``PAUSE_S`` (longer than the agent's default
  600 ms hangover), then its end ("I would like to book a table for … four people at eight."). It counts as
  cut off when the platform's turn holding the end of the speech does not also hold the first part's words (the
  turn ended in the pause).

Figures per kind: the platform's end-of-turn time (speech offset to decision, from ``turn.completed``), caller
voice-to-voice, and the share of turns whose reply began early (``latency.early_start_ms``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .calls import CallResult, Target, Timeouts, conversation
from .speech import Utterance, Voice
from .stats import summary

PAUSE_S = 0.8
ULAW_SILENCE = b"\xff"

KINDS: dict[str, list[str | tuple[str, str]]] = {
    "question": ["What time do you open tomorrow morning?", "Do you have any vegetarian dishes on the menu?",
                 "Is there parking near the restaurant?", "Can I pay by card when I arrive?"],
    "statement": ["I would like a table for four people tonight.", "We are celebrating a birthday on Friday.",
                  "My sister cannot eat any nuts.", "I will be arriving a little late."],
    "short": ["Yes, please.", "No, thank you.", "Sure.", "That is all."],
    "paused": [("I would like to book a table for", "four people at eight."),
               ("Could you tell me if you have", "a table near the window?"),
               ("My daughter is allergic to", "peanuts and shellfish."),
               ("We will be there at around", "half past seven tonight.")],
}


@dataclass
class Asked:
    kind: str
    utterance: Utterance
    first_words: str  # of a paused utterance: words of its first part, to tell whether the turn held them


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def utterances(voice: Voice) -> list[Asked]:
    out: list[Asked] = []
    for kind, items in KINDS.items():
        for item in items:
            if isinstance(item, tuple):
                a, b = voice.utter(item[0]), voice.utter(item[1])
                pause = ULAW_SILENCE * int(PAUSE_S * 8000)
                out.append(Asked(kind, Utterance(f"{item[0]} … {item[1]}", a.ulaw + pause + b.ulaw), item[0]))
            else:
                out.append(Asked(kind, voice.utter(item), ""))
    return out


def cut_off(asked: Asked, caller_text: str | None) -> bool | None:
    """Did the turn that held the end of the speech miss the first part's words (None: no transcript to tell)?"""
    if not asked.first_words or caller_text is None:
        return None
    heard = set(_words(caller_text))
    first = [w for w in _words(asked.first_words) if len(w) > 3]
    return sum(w in heard for w in first) < max(1, len(first) // 2)


async def eot_phase(target: Target, voice: Voice, t: Timeouts, *, rounds: int = 2,
                    per_call: int = 8) -> dict[str, Any]:
    asked = utterances(voice) * rounds
    calls: list[CallResult] = []
    rows: list[tuple[Asked, Any]] = []
    for k in range(0, len(asked), per_call):
        batch = asked[k:k + per_call]
        r = await conversation(target, [a.utterance for a in batch], t)
        calls.append(r)
        rows += list(zip(batch, r.turns, strict=False))
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        mine = [(a, tr) for a, tr in rows if a.kind == kind]
        answered = [tr for _, tr in mine if tr.v2v_ms is not None]
        staged = [tr for tr in answered if tr.stages]
        early = [tr for tr in staged if (tr.stages or {}).get("early_start_ms") is not None]
        cuts = [cut_off(a, tr.caller_text) for a, tr in mine]
        by_kind[kind] = {
            "asked": len(mine), "answered": len(answered),
            "end_of_turn_ms": summary([float(v) for tr in staged
                                       if (v := (tr.stages or {}).get("end_of_turn_ms")) is not None]),
            "voice_to_voice_ms": summary([tr.v2v_ms for tr in answered if tr.v2v_ms is not None]),
            "early_start": {"turns": len(staged), "begun_early": len(early),
                            "early_start_ms": summary([float((tr.stages or {})["early_start_ms"]) for tr in early])},
            "cut_off": {"told": sum(c is not None for c in cuts), "cut": sum(c is True for c in cuts)}
            if kind == "paused" else None,
            # every paused sentence (what was heard tells a cut), two of each other kind
            "examples": [{"said": a.utterance.text, "heard": tr.caller_text}
                         for a, tr in mine[:len(KINDS[kind]) if kind == "paused" else 2]],
        }
    all_staged = [tr for _, tr in rows if tr.stages and tr.v2v_ms is not None]
    detail = [{"kind": a.kind, "call_id": tr.call_id, "said": a.utterance.text, "heard": tr.caller_text,
               "v2v_ms": tr.v2v_ms, "stages": tr.stages, "error": tr.error} for a, tr in rows]
    return {
        "turns_detail": detail,
        "calls": len(calls), "errors": [c.error for c in calls if c.error][:5], "pause_s": PAUSE_S,
        "kinds": by_kind,
        "early_start": {"turns": len(all_staged),
                        "begun_early": sum((tr.stages or {}).get("early_start_ms") is not None for tr in all_staged)},
    }
