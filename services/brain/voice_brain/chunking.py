"""Sentence chunking of a streamed completion: publish each sentence as soon as it is complete.

A sentence ends at . ! ? … (optionally followed by quotes/brackets) and then whitespace, except after an
abbreviation. A title ("Dr.", "Mr.") never ends a sentence. Another abbreviation ("a.m.", "e.g.", "etc.") ends
one only when the next word starts with a capital ("at 5 p.m. See you" splits, "at 8 a.m. tomorrow" does not);
when the buffer ends right after it, the decision waits for the next token (one token of delay, only there).

The first clause (``first_clause_chars``, off by default): until the reply's first chunk has gone out, a comma,
semicolon, colon or dash followed by whitespace ends a chunk too, once the text up to it is at least that long,
so speech starts before the model finishes a long first sentence ("Your order left our warehouse on Monday," is
spoken while "and it should arrive by Friday." streams). Only the first chunk: later clauses would cost prosody
for no gain in latency. A clause does not count as a sentence (``push_chunks`` says which chunks end one).
"""

from __future__ import annotations

import re

_END = re.compile(r"""[.!?…]+["')\]]*\s""")
_LAST_WORD = re.compile(r"(\S+)$")
_CLAUSE = re.compile(r"(?:[,;:]|\s[\u2014\u2013-])\s")  # , ; : or a spaced dash (em, en, hyphen)
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
    def __init__(self, min_chars: int = MIN_CHARS, first_clause_chars: int = 0) -> None:
        self.min_chars = min_chars
        self.first_clause_chars = first_clause_chars  # 0: no clause chunk
        self._buf = ""
        self._started = False  # a chunk has gone out

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the chunks completed by it (sentences, and possibly a first clause)."""
        return [text for text, _ in self.push_chunks(delta)]

    def push_chunks(self, delta: str) -> list[tuple[str, bool]]:
        """Add streamed text; return the chunks completed by it, each with whether it ends a sentence."""
        out = [(text, True) for text in self._sentences(delta)]
        if not out and not self._started and self.first_clause_chars:
            for m in _CLAUSE.finditer(self._buf):
                clause = self._buf[: m.end()].strip()
                if len(clause) >= self.first_clause_chars:
                    out.append((clause, False))
                    self._buf = self._buf[m.end():]
                    break
        self._started = self._started or bool(out)
        return out

    def _sentences(self, delta: str) -> list[str]:
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
