"""What the caller hears next: agent audio ordered by turn and chunk, with epochs and marks.

Pure logic (no I/O). tts replicas may synthesize the chunks of one reply in parallel, so frames can
arrive interleaved; the buffer plays chunk n+1 only after chunk n's last frame. Frames of an epoch
older than the call's current epoch are dropped (barge-in cancelled them).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from voice_schemas.audio import AudioFrame


@dataclass
class _Turn:
    turn_id: str
    epoch: int
    chunks: dict[int, deque[AudioFrame]] = field(default_factory=dict)
    next_chunk: int = 0
    final_chunk: int | None = None
    started: bool = False
    done: bool = False


@dataclass(frozen=True)
class Outgoing:
    frame: AudioFrame
    first_of_turn: bool
    end_of_chunk: bool
    end_of_turn: bool


class PlayoutBuffer:
    def __init__(self) -> None:
        self.epoch = 0
        self._turns: OrderedDict[str, _Turn] = OrderedDict()
        self.dropped_stale = 0

    def add(self, f: AudioFrame) -> bool:
        if f.epoch < self.epoch or f.turn_id is None or f.chunk is None:
            self.dropped_stale += 1
            return False
        t = self._turns.get(f.turn_id)
        if t is None:
            t = self._turns[f.turn_id] = _Turn(f.turn_id, f.epoch)
        if t.done or f.chunk < t.next_chunk:
            self.dropped_stale += 1
            return False
        t.chunks.setdefault(f.chunk, deque()).append(f)
        if f.final:
            t.final_chunk = f.chunk
        return True

    def next(self) -> Outgoing | None:
        """The next frame to send, or None when nothing is playable yet."""
        while self._turns:
            t = next(iter(self._turns.values()))
            if t.done:
                self._turns.popitem(last=False)
                continue
            q = t.chunks.get(t.next_chunk)
            if not q:
                return None
            f = q.popleft()
            first = not t.started
            t.started = True
            end_chunk = f.last_in_chunk
            end_turn = end_chunk and (f.final or t.final_chunk == t.next_chunk)
            if end_chunk:
                del t.chunks[t.next_chunk]
                t.next_chunk += 1
            if end_turn:
                t.done = True
            return Outgoing(f, first, end_chunk, end_turn)
        return None

    def pending(self) -> bool:
        """True while a turn has started or has frames waiting."""
        return any(not t.done for t in self._turns.values())

    def current_turn(self) -> tuple[str, int] | None:
        for t in self._turns.values():
            if not t.done:
                return t.turn_id, t.epoch
        return None

    def clear(self, new_epoch: int) -> list[str]:
        """Barge-in: drop everything queued; frames of older epochs are refused from now on."""
        self.epoch = max(self.epoch, new_epoch)
        cleared = [t.turn_id for t in self._turns.values() if not t.done and t.started]
        self._turns.clear()
        return cleared
