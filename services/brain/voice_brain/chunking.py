"""Sentence chunking of a streamed completion: publish each sentence as soon as it is complete."""

from __future__ import annotations

import re

# A sentence ends at . ! ? (optionally followed by quotes/brackets) and then whitespace.
_END = re.compile(r"""[.!?…]+["')\]]*\s""")
MIN_CHARS = 12  # "Mr. X" / "e.g. " style fragments are merged into the next sentence


class SentenceChunker:
    def __init__(self, min_chars: int = MIN_CHARS) -> None:
        self.min_chars = min_chars
        self._buf = ""

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the sentences completed by it."""
        self._buf += delta
        out: list[str] = []
        start = 0
        for m in _END.finditer(self._buf):
            candidate = self._buf[start : m.end()].strip()
            if len(candidate) >= self.min_chars:
                out.append(candidate)
                start = m.end()
        self._buf = self._buf[start:]
        return out

    def flush(self) -> str:
        rest, self._buf = self._buf.strip(), ""
        return rest
