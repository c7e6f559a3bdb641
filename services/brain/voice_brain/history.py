"""Conversation state per call, in JetStream KV so any brain replica can take the next turn.

Updates use the KV revision (compare-and-set) and retry on conflict, so two replicas handling
events of one call never lose each other's writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field
from voice_schemas import subjects


class TurnState(BaseModel):
    turn_id: str
    epoch: int = 0
    caller_text: str | None = None
    caller_started_at: str | None = None
    caller_ended_at: str | None = None
    chunks: list[str] = Field(default_factory=list)
    reply_done: bool = False
    heard_chunks: list[int] = Field(default_factory=list)
    interrupted: bool = False
    completed: bool = False
    speech_end_wall_ms: float = 0.0
    end_of_turn_ms: float | None = None
    stt_ms: float | None = None
    llm_start_wall_ms: float | None = None
    llm_first_token_ms: float | None = None
    llm_first_sentence_ms: float | None = None
    first_sentence_wall_ms: float | None = None
    first_audio_wall_ms: float | None = None
    agent_started_at: str | None = None
    hangup_after: bool = False


class CallHistory(BaseModel):
    call_id: str
    tenant_id: str
    agent_id: str
    agent_version: int
    epoch: int = 0
    ended: bool = False
    messages: list[dict[str, Any]] = Field(default_factory=list)
    turns: dict[str, TurnState] = Field(default_factory=dict)

    def heard_text(self, turn: TurnState) -> str:
        if turn.interrupted:
            heard = [turn.chunks[i] for i in sorted(set(turn.heard_chunks)) if i < len(turn.chunks)]
        else:
            heard = turn.chunks
        return " ".join(c for c in heard if c)


class ConflictRetriesExhausted(Exception):
    pass


class HistoryStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, call_id: str) -> CallHistory | None:
        try:
            e = await self.kv.get(subjects.call_key(call_id))
        except KeyNotFoundError:
            return None
        return CallHistory.model_validate_json(e.value) if e.value else None

    async def create(self, h: CallHistory) -> bool:
        """False when the call already has history (a redelivered CallStarted)."""
        try:
            await self.kv.create(subjects.call_key(h.call_id), h.model_dump_json().encode())
            return True
        except Exception:
            return False

    async def delete(self, call_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.kv.purge(subjects.call_key(call_id))

    async def update(self, call_id: str, fn: Callable[[CallHistory], Any], retries: int = 20) -> CallHistory | None:
        """Apply ``fn`` (mutates in place) with compare-and-set; None when the call has no history."""
        key = subjects.call_key(call_id)
        for _ in range(retries):
            try:
                e = await self.kv.get(key)
            except KeyNotFoundError:
                return None
            if not e.value:
                return None
            h = CallHistory.model_validate_json(e.value)
            fn(h)
            try:
                await self.kv.update(key, h.model_dump_json().encode(), last=e.revision)
                return h
            except KeyWrongLastSequenceError:
                continue
        raise ConflictRetriesExhausted(call_id)
