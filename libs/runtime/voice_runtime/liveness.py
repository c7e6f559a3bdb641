"""Which replicas of a kind are alive: a heartbeat key per replica in the KV bucket ``replicas`` (``KV_REPLICAS``),
whose TTL ages out the key of a replica that stopped beating (killed, hung, cut off).

A replica that holds per-call state others cannot see (ingress: the caller's connection; media: a call's turn
detection) beats with ``Liveness.run`` and names itself in the calls it holds; the others watch the set of live
replicas of that kind and act when one disappears (``on_gone``, also called once at start and every
``full_scan_s``, so that a change missed while NATS was unreachable is caught up). ``is_alive`` checks one replica
right before acting, so a replica that has just started (and was not in the last read set) is never taken for dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, NoKeysError

from .logging import get_logger, safe_error

log = get_logger(__name__)

# with the bucket's TTL (KV_REPLICAS.ttl_s, 1.5 s), a dead replica is noticed within TTL + CHECK_S (about 2 s)
HEARTBEAT_S = 0.5
CHECK_S = 0.5
OnGone = Callable[[set[str]], Awaitable[None]]  # the replicas of the kind alive now -> act on the calls of the others


class Liveness:
    def __init__(self, kind: str, replica_id: str, replicas: Any, on_gone: OnGone, *,
                 on_lapsed: Callable[[], Awaitable[None]] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, check_s: float = CHECK_S, full_scan_s: float = 30.0) -> None:
        """``replicas``: the KV bucket (``nats.js.kv.KeyValue`` or ``MemoryKV``). ``on_lapsed``: this replica's own
        key had aged out (its loop or its link stalled past the TTL): the others may have taken over what it held,
        so it checks before it goes on."""
        self.prefix = f"{kind}."
        self.replica_id, self.replicas, self.on_gone = replica_id, replicas, on_gone
        self.heartbeat_s, self.check_s, self.full_scan_s = heartbeat_s, check_s, full_scan_s
        self.on_lapsed = on_lapsed
        self._beaten = False
        self._alive: set[str] = set()

    def key(self, replica_id: str) -> str:
        return self.prefix + replica_id

    async def beat(self) -> None:
        await self.replicas.put(self.key(self.replica_id), str(int(time.time() * 1000)).encode())

    async def leave(self) -> None:
        """A graceful stop (this replica handed over or ended what it held): its key goes at once."""
        with contextlib.suppress(Exception):
            await self.replicas.delete(self.key(self.replica_id))

    async def alive(self) -> set[str]:
        try:
            keys = await self.replicas.keys()
        except (KeyNotFoundError, NoKeysError):
            return set()
        return {k[len(self.prefix):] for k in keys if k.startswith(self.prefix)}

    async def is_alive(self, replica_id: str) -> bool:
        try:
            entry = await self.replicas.get(self.key(replica_id))
        except KeyNotFoundError:
            return False
        return bool(entry.value)

    async def run(self, stopping: asyncio.Event) -> None:
        last_beat = last_scan = 0.0
        while not stopping.is_set():
            now = time.monotonic()
            try:
                if now - last_beat >= self.heartbeat_s:
                    lapsed = self._beaten and not await self.is_alive(self.replica_id)
                    await self.beat()
                    self._beaten, last_beat = True, now
                    if lapsed and self.on_lapsed is not None:
                        log.warning("liveness_lapsed", kind=self.prefix[:-1])
                        await self.on_lapsed()
                alive = await self.alive()
                if self._alive - alive or now - last_scan >= self.full_scan_s:
                    await self.on_gone(alive)
                    last_scan = now
                self._alive = alive
            except Exception as e:  # NATS unreachable for a moment: again next round
                log.warning("liveness_round_failed", kind=self.prefix[:-1], error=safe_error(e, 200))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.check_s)
