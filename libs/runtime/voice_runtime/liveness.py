"""Which replicas of a kind are alive: a heartbeat key per replica in the KV bucket ``replicas`` (``KV_REPLICAS``),
whose TTL ages out the key of a replica that stopped beating (killed, hung, cut off).

A replica that holds per-call state others cannot see (ingress: the caller's connection; media: a call's turn
detection) beats with ``Liveness.run`` and names itself in the calls it holds; the others watch the set of live
replicas of that kind and act when one disappears (``on_gone``, also called once at start and every
``full_scan_s``, so that a change missed while NATS was unreachable is caught up). ``is_alive`` checks one replica
right before acting, so a replica that has just started (and was not in the last read set) is never taken for dead.

Reading the set costs no JetStream consumer per round: one long-lived watch of the bucket learns the replicas that
beat (each put), and each round checks those with a direct get (a key that aged out is gone). Listing the bucket's
keys every round instead creates an ephemeral consumer each time, and with every replica doing so twice a second the
server's consumer limit was reached (found by the chaos run). A bucket that cannot be watched (the in-memory KV of
unit tests) is listed.
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

# with the bucket's TTL (KV_REPLICAS.ttl_s, 1.2 s), a dead replica is noticed within TTL + CHECK_S of its last beat
# (at most ~1.45 s after it dies, since it beat at most HEARTBEAT_S before); a live one is taken for dead only if its
# loop stalls for TTL - HEARTBEAT_S (0.95 s), and then it finds out (``on_lapsed``) and checks what it held
HEARTBEAT_S = 0.25
CHECK_S = 0.25
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
        self._known: set[str] = set()  # replicas of the kind seen beating (the watch adds, a failed get removes)
        self._watching = False
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
        if not self._watching:
            try:
                keys = await self.replicas.keys()
            except (KeyNotFoundError, NoKeysError):
                return set()
            return {k[len(self.prefix):] for k in keys if k.startswith(self.prefix)}
        out: set[str] = set()
        for replica in list(self._known):
            if await self.is_alive(replica):
                out.add(replica)
            else:
                self._known.discard(replica)  # aged out: a replica that beats again is added back by the watch
        return out

    async def _watch(self, stopping: asyncio.Event) -> None:
        """Learn the replicas that beat from the bucket's updates (one ordered consumer for the process's life)."""
        watchall = getattr(self.replicas, "watchall", None)
        if watchall is None:
            return
        watcher = await watchall()
        self._watching = True
        try:
            while not stopping.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)
                except Exception:  # a timeout, or the connection coming back: keep watching
                    continue
                if entry is None or not getattr(entry, "key", "").startswith(self.prefix):
                    continue
                replica = entry.key[len(self.prefix):]
                if getattr(entry, "operation", None) in ("DEL", "PURGE"):
                    self._known.discard(replica)
                else:
                    self._known.add(replica)
        finally:
            self._watching = False
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def is_alive(self, replica_id: str) -> bool:
        try:
            entry = await self.replicas.get(self.key(replica_id))
        except KeyNotFoundError:
            return False
        return bool(entry.value)

    async def run(self, stopping: asyncio.Event) -> None:
        watch = asyncio.create_task(self._watch(stopping))
        try:
            await self._run(stopping)
        finally:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch

    async def _run(self, stopping: asyncio.Event) -> None:
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
