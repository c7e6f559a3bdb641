"""Per-call facts the stt service keeps, in bounded memory: which calls ended, which language each speaks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable


class EndedCalls:
    """Ids of calls that have ended, for the last ``capacity`` calls (the oldest is forgotten first).

    Late work for an ended call (an utterance still in the stream) is dropped instead of transcribed.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, call_id: str) -> None:
        self._ids[call_id] = None
        self._ids.move_to_end(call_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


LanguageLookup = Callable[[str], Awaitable[str | None]]


class CallLanguages:
    """The language of each live call (from its agent), looked up once per call and cached (LRU).

    ``lookup`` returns the agent's language, or None when the call or agent is unknown; it may raise on
    bus trouble. Either way the default answers and nothing is cached, so a later utterance retries.
    """

    def __init__(self, lookup: LanguageLookup, default: str | None, capacity: int = 10_000) -> None:
        self._lookup = lookup
        self.default = default
        self.capacity = capacity
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def get(self, call_id: str) -> str | None:
        if call_id in self._cache:
            self._cache.move_to_end(call_id)
            return self._cache[call_id]
        try:
            language = await self._lookup(call_id)
        except Exception:  # the default language is a fine answer; never fail a turn on it
            language = None
        if language is None:
            return self.default
        self._cache[call_id] = language
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return language

    def forget(self, call_id: str) -> None:
        self._cache.pop(call_id, None)
