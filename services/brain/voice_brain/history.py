"""Conversation state per call, in JetStream KV so any brain replica can take the next turn.

Updates use the KV revision (compare-and-set) and retry on conflict, so two replicas handling events of one
call never lose each other's writes. The state changes themselves are ``CallHistory`` methods
(``conversation.py``); this module only loads, applies, bounds (``CallHistory.compact`` before every write, so
no operation can grow a call's value past ``HistoryLimits``) and stores.

A KV that cannot be reached (timeout, lost connection) raises ``Transient``: the event is redelivered later
rather than dead-lettered, and an unknown outcome is never read as an answer (a failed ``create`` is not
"the call already has history").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from voice_runtime.bus import Transient
from voice_schemas import subjects

from .conversation import CallHistory, HistoryLimits

T = TypeVar("T")

# what a KV call raises when the server cannot answer now (nats-py errors, sockets, timeouts)
_OUTAGE = (nats.errors.Error, OSError, TimeoutError)


class ConflictRetriesExhausted(Exception):
    pass


class HistoryStore:
    def __init__(self, kv: Any, limits: HistoryLimits | None = None) -> None:
        """``kv``: a ``nats.js.kv.KeyValue`` (or ``voice_runtime.memory.MemoryKV``)."""
        self.kv = kv
        self.limits = limits or HistoryLimits()

    async def get(self, call_id: str) -> CallHistory | None:
        try:
            entry = await self.kv.get(subjects.call_key(call_id))
        except KeyNotFoundError:
            return None
        except _OUTAGE as e:
            raise Transient(f"history KV unavailable: {e!r}"[:300]) from e
        return CallHistory.model_validate_json(entry.value) if entry.value else None

    async def create(self, h: CallHistory) -> bool:
        """False when the call already has history (a redelivered ``CallStarted``)."""
        h.compact(self.limits)
        try:
            await self.kv.create(subjects.call_key(h.call_id), h.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            return False  # the key exists: the only answer that means "already there"
        except Exception as e:
            raise Transient(f"history KV create failed: {e!r}"[:300]) from e
        return True

    async def delete(self, call_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.kv.purge(subjects.call_key(call_id))

    async def update(self, call_id: str, fn: Callable[[CallHistory], T],
                     retries: int = 20) -> tuple[CallHistory, T] | None:
        """Apply ``fn`` (mutates in place, may run several times on fresh copies) with compare-and-set.

        Returns the stored history and what ``fn`` returned on the application that was stored; None when the
        call has no history."""
        key = subjects.call_key(call_id)
        try:
            for _ in range(retries):
                try:
                    e = await self.kv.get(key)
                except KeyNotFoundError:
                    return None
                if not e.value:
                    return None
                h = CallHistory.model_validate_json(e.value)
                result = fn(h)
                h.compact(self.limits)
                try:
                    await self.kv.update(key, h.model_dump_json().encode(), last=e.revision)
                    return h, result
                except KeyWrongLastSequenceError:
                    continue
        except _OUTAGE as e:
            raise Transient(f"history KV unavailable: {e!r}"[:300]) from e
        raise ConflictRetriesExhausted(call_id)
