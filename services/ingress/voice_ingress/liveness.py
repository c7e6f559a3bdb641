"""Ending the calls of an ingress replica that died.

A caller's connection (a Twilio WebSocket, a WebRTC peer, a chat) lives in one ingress replica; when that process
dies, its calls cannot go on, but nothing downstream would know: media, brain and analytics wait for a
``call.ended`` that never comes. So every replica beats (``voice_runtime.liveness``, kind ``i``), a call's record
(KV ``calls``) names the replica holding its connection (``ingress_replica``), and when a replica disappears the
others scan the records and end each call whose replica has no heartbeat, checked again right before:
``call.ended`` with reason ``ingress_lost`` (event id ``<call>-ended``, the same as any end of the call, so two
replicas reaping at once, or a replica that ended the call itself, publish one event), then the record goes. Calls
of live replicas are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, NoKeysError
from voice_runtime import metrics
from voice_runtime.liveness import Liveness
from voice_runtime.logging import get_logger
from voice_schemas import CallRecord, events, make, subjects

log = get_logger(__name__)

KIND = "i"
Publish = Callable[[Any], Awaitable[None]]


class CallReaper:
    def __init__(self, replica_id: str, replicas: Any, calls: Any, publish: Publish) -> None:
        """``replicas``, ``calls``: the KV buckets (``nats.js.kv.KeyValue`` or ``MemoryKV``)."""
        self.replica_id, self.calls, self.publish = replica_id, calls, publish
        self.liveness = Liveness(KIND, replica_id, replicas, self.reap)

    async def reap(self, alive: set[str]) -> None:
        """End every call whose ingress replica has no heartbeat."""
        try:
            keys = await self.calls.keys()
        except (KeyNotFoundError, NoKeysError):
            return
        for key in keys:
            if "." in key:  # p.<sid>, m.<call>, g.<jti>: not a call record
                continue
            try:
                entry = await self.calls.get(key)
            except KeyNotFoundError:
                continue
            if not entry.value:
                continue
            record = CallRecord.model_validate_json(entry.value)
            owner = record.ingress_replica
            if owner is None or owner == self.replica_id or owner in alive or await self.liveness.is_alive(owner):
                continue
            await self._end(record)

    async def _end(self, record: CallRecord) -> None:
        log.warning("call_of_dead_ingress_ended", call_id=record.call_id, tenant_id=record.tenant_id,
                    replica=record.ingress_replica)
        metrics.TAKEOVERS.labels("ingress", "call_ended").inc()
        await self.publish(make(events.CallEnded(reason=events.EndReason.ingress_lost,
                                                 detail="the ingress replica holding the caller's connection died"),
                                tenant_id=record.tenant_id, call_id=record.call_id, event_id=f"{record.call_id}-ended"))
        keys = [subjects.call_key(record.call_id)]
        if record.provider_call_id:
            with contextlib.suppress(subjects.InvalidSubjectToken):
                keys.append(subjects.provider_key(record.provider_call_id))
        for key in keys:
            with contextlib.suppress(Exception):
                await self.calls.delete(key)
