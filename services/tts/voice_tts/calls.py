"""Per-call audio state of the tts service: latest epoch, frame sequence, chunk ordering.

Pure asyncio, no bus: the service feeds it barge-ins, chunks and call ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(eq=False)
class CallAudio:
    """What one call needs: chunks of a call are spoken one at a time (``lock``, FIFO), frames carry a
    per-call increasing ``seq``, and a chunk whose epoch is below ``epoch`` is stale (barged in)."""

    epoch: int = 0
    seq: int = 0
    ended: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: float = field(default_factory=time.monotonic)
    # event ids of chunks already spoken by this replica (a redelivery is not spoken twice)
    spoken: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def observe_epoch(self, epoch: int) -> None:
        if epoch > self.epoch:
            self.epoch = epoch
        self.touched = time.monotonic()

    def is_stale(self, epoch: int) -> bool:
        """True once the call moved past ``epoch`` (barge-in) or ended: stop speaking it."""
        return self.ended or epoch < self.epoch

    def next_seq(self, frames: int = 1) -> int:
        """The sequence number of the next frame, ``frames`` of them taken (a message of several)."""
        self.seq += frames
        return self.seq - frames + 1

    def mark_spoken(self, event_id: str, keep: int = 256) -> None:
        self.spoken[event_id] = None
        while len(self.spoken) > keep:
            self.spoken.popitem(last=False)


class CallAudioRegistry:
    """Live calls' ``CallAudio`` plus a bounded memory of ended calls (late chunks for them are dropped)."""

    def __init__(self, ended_capacity: int = 10_000) -> None:
        self._calls: dict[str, CallAudio] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.ended_capacity = ended_capacity

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def is_ended(self, call_id: str) -> bool:
        return call_id in self._ended

    def get(self, call_id: str) -> CallAudio | None:
        """The call's state (created on first use), or None when the call has ended."""
        if call_id in self._ended:
            return None
        state = self._calls.get(call_id)
        if state is None:
            state = self._calls[call_id] = CallAudio()
        return state

    def barge_in(self, call_id: str, epoch: int) -> CallAudio | None:
        """Record a committed barge-in: ``epoch`` is the call's new epoch."""
        state = self.get(call_id)
        if state is not None:
            state.observe_epoch(epoch)
        return state

    def end(self, call_id: str) -> None:
        """Forget the call; anything still speaking for it stops at the next frame."""
        state = self._calls.pop(call_id, None)
        if state is not None:
            state.ended = True
        self._ended[call_id] = None
        self._ended.move_to_end(call_id)
        while len(self._ended) > self.ended_capacity:
            self._ended.popitem(last=False)

    def sweep(self, idle_s: float) -> int:
        """Drop state of calls idle for ``idle_s`` (their CallEnded was missed); returns how many."""
        now = time.monotonic()
        idle = [cid for cid, s in self._calls.items() if now - s.touched > idle_s and not s.lock.locked()]
        for cid in idle:
            del self._calls[cid]
        return len(idle)
