"""The history store on an in-memory KV: create once, compare-and-set, and outages that are not answers."""

from __future__ import annotations

import nats.errors
import pytest
from voice_brain.conversation import CallHistory
from voice_brain.history import HistoryStore
from voice_runtime.bus import Transient
from voice_runtime.memory import MemoryEntry, MemoryKV
from voice_schemas import subjects

pytestmark = pytest.mark.unit


class DownKV(MemoryKV):
    """A KV whose server does not answer (every call times out)."""

    async def create(self, key: str, value: bytes) -> int:
        raise nats.errors.TimeoutError

    async def get(self, key: str) -> MemoryEntry:
        raise nats.errors.ConnectionClosedError


def call() -> CallHistory:
    return CallHistory(call_id=subjects.new_call_id(), tenant_id="t1", agent_id="a1", agent_version=1)


async def test_create_is_true_once_then_false_for_an_existing_call() -> None:
    store, h = HistoryStore(MemoryKV("history")), call()
    assert await store.create(h)
    assert not await store.create(h)  # a redelivered CallStarted


async def test_a_kv_outage_on_create_is_transient_not_already_exists() -> None:
    store = HistoryStore(DownKV("history"))
    with pytest.raises(Transient):
        await store.create(call())


async def test_a_kv_outage_on_read_or_update_is_transient() -> None:
    store = HistoryStore(DownKV("history"))
    with pytest.raises(Transient):
        await store.get("c1")
    with pytest.raises(Transient):
        await store.update("c1", lambda h: h.add_note("x"))


async def test_update_retries_on_a_concurrent_write_and_returns_the_stored_result() -> None:
    kv = MemoryKV("history")
    store, h = HistoryStore(kv), call()
    await store.create(h)
    runs = 0

    def add(x: CallHistory) -> int:
        nonlocal runs
        runs += 1
        if runs == 1:  # another replica writes between our read and our write
            other = x.model_copy(deep=True)
            other.add_note("from the other replica")
            kv._write(subjects.call_key(x.call_id), other.model_dump_json().encode())
        x.add_note("ours")
        return len(x.messages)

    applied = await store.update(h.call_id, add)
    assert applied is not None and runs == 2
    stored, result = applied
    assert [m["content"] for m in stored.messages] == ["from the other replica", "ours"] and result == 2
    assert await store.update("no-such-call", add) is None
