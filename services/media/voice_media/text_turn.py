"""Whether a caller's words sound finished: the transcript as a second end-of-turn signal beside the turn model.

The turn model hears prosody; it cannot hear that "I would like to book a table for" stops on a word that needs
more. ``sounds_finished`` supplies that one fact with a small English-only word rule: media weighs the words only for
agents whose language is English (``service.py``), since other languages would be judged by English function words.
It is deliberately shallow; a wrong answer only moves the end of the turn within the bounds the detector sets
(``turns.DetectorParams.finished_end_of_turn_ms`` / ``unfinished_end_of_turn_ms``).

1. Does the text end on a word that cannot end a clause (an article, a possessive, a conjunction, most
   prepositions, a filler)? Then it is unfinished even with a full stop after it: a transcriber may close speech
   that trails off with a period.
2. Otherwise the punctuation decides when there is any: ``?`` ``!`` ``.`` finished; an ellipsis, a dash, a colon or
   a semicolon unfinished. With none, a word that usually needs more but may close an elliptical answer (an
   auxiliary or modal, "so", "that", a preposition that may be a particle: "my number is", "yes I can") is
   unfinished, and any other last word finished.
3. A trailing comma after any other word says nothing either way (``None``: the turn model and the hangover decide,
   as without words): a transcriber decoding audio that stops at a pause writes one where the sentence had ended
   as often as where it goes on (Moonshine, 2026-12-03: "How much does a large pizza cost," from audio ending
   64 ms after the question held that turn 1.2 s as unfinished), and "so I was wondering," must not end a turn
   at 350 ms either.

A question mark overrides rule 1 ("What is it for?" is finished): it stands for the rising pitch of a question.

Three endings count as unfinished like rule 1, full stop or not, because a transcriber closes broken-off speech
with one (Moonshine on the bench's broken-off sentences, 2026-12-03: "We will be there at around.", "Could you tell
me if you have?"):

- two prepositions in a row ("at around", "for about", "until after"): an approximate time or amount follows;
- an embedded question whose verb has no object yet: "if" or "whether" among the last four words, and the text
  ends on an auxiliary or "have" ("…tell me if you have", "…know whether they are"), even with a question mark;
- a verb of wanting after its subject or a modal ("I would like", "we need", "I'd want"), without a question mark,
  unless a free relative comes first ("whatever you like", "if you want").

Each can misjudge an elliptical answer ("Do you know if it is?", "if you like."): that costs the turn
``unfinished_end_of_turn_ms`` instead of the usual end, never a cut-off caller.
"""

from __future__ import annotations

import re

# Prepositions that need their object ("a table for", "send it to"), and those that may be a particle ending an
# elliptical answer ("come in", "I'll be there at around": see rule 1 and the two-in-a-row rule)
_PREPOSITIONS_NEEDING_MORE = frozenset("of for with from to into onto via towards toward".split())
_PREPOSITIONS_MAYBE_ENDING = frozenset("""
    at in on about by around near after before until till over under through across against between behind
    without within among per
""".split())
_PREPOSITIONS = _PREPOSITIONS_NEEDING_MORE | _PREPOSITIONS_MAYBE_ENDING
_WANTING = frozenset("want wanted need needed like".split())
# Cannot end a clause: whatever follows is still to come ("a table for", "my number and", "um").
_DANGLING = _PREPOSITIONS_NEEDING_MORE | frozenset("""
    a an the my your his our their its
    and or but nor because although whereas unless whether if than as
    um uh er erm uhm hmm
""".split())
# Usually need more but can close an elliptical answer ("yes it is.", "I think so."): unfinished only unpunctuated.
_MAYBE_DANGLING = _PREPOSITIONS_MAYBE_ENDING | _WANTING | frozenset("""
    is are was were am be been being
    can could would will should shall may might must
    do does did have has had
    so then that which who when where while though
""".split())
_EMBEDDED = frozenset({"if", "whether"})
# an embedded question's verb that still needs its object or complement ("…if you have", "…whether they are")
_EMBEDDED_VERBS = frozenset("is are was were am be can could would will should do does did have has had".split())
_SUBJECTS = frozenset("i we you they he she would i'd we'd you'd they'd he'd she'd really also".split())
# "whatever you like", "if you want", "what you need": the wanting is the clause's object already
_FREE_RELATIVES = frozenset("whatever whichever whenever wherever however what if as anything everything".split())
_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")  # "mm-hmm" is one word (a yes), not a trailing "hmm"
_OPEN_ENDINGS = (";", ":", "...", "\u2026", "-", "\u2013", "\u2014")  # not a comma: judged by the last word


def sounds_finished(text: str) -> bool | None:
    """``None``: no words, or nothing to tell (a trailing comma after a content word); ``False``: the text stops
    where more must follow; ``True``: it could end here.

    English only; the module docstring gives the rules.
    """
    stripped = text.strip().rstrip("\"')]")
    words = _WORD.findall(stripped.lower())
    if not words:
        return None
    last = words[-1]
    if last in _EMBEDDED_VERBS and _EMBEDDED.intersection(words[-5:-1]):
        return False
    if stripped.endswith("?"):
        return True
    if last in _DANGLING:
        return False
    before = words[-2] if len(words) > 1 else ""
    if last in _PREPOSITIONS and before in _PREPOSITIONS:
        return False
    if last in _WANTING and before in _SUBJECTS and (len(words) < 3 or words[-3] not in _FREE_RELATIVES):
        return False
    if stripped.endswith(_OPEN_ENDINGS):
        return False
    if stripped.endswith((".", "!")):
        return True
    if last in _MAYBE_DANGLING:
        return False
    return None if stripped.endswith(",") else True
