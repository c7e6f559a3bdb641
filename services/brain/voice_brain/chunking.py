"""Sentence chunking of a streamed completion: publish each sentence as soon as it is complete.

A sentence ends at . ! ? … (optionally followed by quotes/brackets) and then whitespace, except after an
abbreviation. A title ("Dr.", "Mr.") never ends a sentence. Another abbreviation ("a.m.", "e.g.", "etc.") ends
one only when the next word starts with a capital ("at 5 p.m. See you" splits, "at 8 a.m. tomorrow" does not);
when the buffer ends right after it, the decision waits for the next token (one token of delay, only there).
"""

from __future__ import annotations

import re

_END = re.compile(r"""[.!?…]+["')\]]*\s""")
_LAST_WORD = re.compile(r"(\S+)$")
MIN_CHARS = 12  # "Hi. " style fragments are merged into the next sentence

# never the end of a sentence: a name follows
TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "mt", "sen", "rep", "gov", "gen", "capt", "lt", "sgt"})
# the end of a sentence only when a capitalised word follows (besides any word with inner dots: a.m., e.g., U.S.)
ABBREVIATIONS = frozenset({"etc", "vs", "approx", "no", "nos", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
                           "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun",
                           "min", "max", "ave", "inc", "ltd", "co", "corp", "dept", "est", "ft", "oz", "lb", "lbs"})


def _kind(word: str) -> str:
    """'title', 'abbreviation' or 'word' for the word a single period follows."""
    bare = word.lstrip("\"'([").lower()
    if bare in TITLES:
        return "title"
    if "." in bare or bare in ABBREVIATIONS:
        return "abbreviation"
    return "word"


class SentenceChunker:
    def __init__(self, min_chars: int = MIN_CHARS) -> None:
        self.min_chars = min_chars
        self._buf = ""

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the sentences completed by it."""
        self._buf += delta
        buf = self._buf
        out: list[str] = []
        start = 0
        for m in _END.finditer(buf):
            if m.group().rstrip()[-1:] == "." and m.group()[:2] != "..":
                word = _LAST_WORD.search(buf, start, m.start())
                kind = _kind(word.group(1)) if word else "word"
                if kind == "title":
                    continue
                if kind == "abbreviation":
                    nxt = buf[m.end():].lstrip()
                    if not nxt:
                        break  # the next word decides; it has not streamed yet
                    if not nxt[0].isupper():
                        continue
            candidate = buf[start : m.end()].strip()
            if len(candidate) >= self.min_chars:
                out.append(candidate)
                start = m.end()
        self._buf = buf[start:]
        return out

    def flush(self) -> str:
        rest, self._buf = self._buf.strip(), ""
        return rest
