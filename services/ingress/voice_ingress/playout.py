"""What the caller hears next: agent audio ordered by turn and chunk, with epochs and marks.

Pure logic (no I/O, time passed in). tts replicas may synthesize the chunks of one reply in parallel, so frames
can arrive interleaved; the buffer plays chunk n+1 only after chunk n's last frame. Frames of an epoch older than
the call's current epoch are dropped (barge-in cancelled them).

A turn whose audio stops arriving never holds the call: its final frame may be lost, or brain may supersede the
reply without a final chunk (a newer transcript; with several brain replicas the older reply may even go on). The
turn being played is given up (``TurnClosed``) when another turn of the same epoch has audio ready while it has
none, when a turn of a newer epoch has audio ready (that epoch's barge-in is on its way), or after ``gap_s``
without a frame of it (counted only while it is the turn being played).

A pause may take back frames already sent that the caller has not heard yet (``put_back``): they go in front of
everything again, into their turns and chunks, so that playout resumes exactly where the caller stopped hearing.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from voice_schemas.audio import AudioFrame

_Key = tuple[str, int]  # (turn id, epoch)
MAX_REMEMBERED_TURNS = 64  # finished or closed turns whose late frames are refused


@dataclass
class _Turn:
    turn_id: str
    epoch: int
    progress_at: float  # the last time a frame of it arrived or played, or it became the turn being played
    chunks: dict[int, deque[AudioFrame]] = field(default_factory=dict)
    frames_had: dict[int, int] = field(default_factory=dict)  # chunk -> highest frame index queued or played
    next_chunk: int = 0
    final_chunk: int | None = None
    started: bool = False
    playing: bool = False  # it is the turn being played (the oldest unfinished one)

    def playable(self) -> bool:
        return bool(self.chunks.get(self.next_chunk))


@dataclass(frozen=True)
class Outgoing:
    frame: AudioFrame
    first_of_turn: bool
    end_of_chunk: bool
    end_of_turn: bool


@dataclass(frozen=True)
class TurnClosed:
    """The turn being played was given up before its final frame: the rest of it is dropped.

    ``superseded``: a later turn had audio ready while this one had none; otherwise its audio stopped arriving
    for the gap. ``started``: some of its audio was sent to the caller.
    """

    turn_id: str
    epoch: int
    started: bool
    superseded: bool


class PlayoutBuffer:
    def __init__(self, gap_s: float = 2.0) -> None:
        self.epoch = 0
        self.gap_s = gap_s
        self._turns: OrderedDict[_Key, _Turn] = OrderedDict()
        self._over: OrderedDict[_Key, None] = OrderedDict()  # finished, closed or cleared turns
        self.dropped_stale = 0

    def add(self, f: AudioFrame, now: float) -> bool:
        if f.epoch < self.epoch or f.turn_id is None or f.chunk is None or (f.turn_id, f.epoch) in self._over:
            self.dropped_stale += 1
            return False
        key = (f.turn_id, f.epoch)
        t = self._turns.get(key)
        if t is None:
            t = self._turns[key] = _Turn(f.turn_id, f.epoch, now)
        if f.chunk < t.next_chunk:
            self.dropped_stale += 1
            return False
        if f.frame is not None:  # a chunk sent again (its tts replica died mid-chunk): only frames not yet had
            had = t.frames_had.get(f.chunk, -1)
            if f.frame <= had:
                self.dropped_stale += 1
                return False
            t.frames_had[f.chunk] = f.frame
        t.chunks.setdefault(f.chunk, deque()).append(f)
        t.progress_at = now
        if f.final:
            t.final_chunk = f.chunk
        return True

    def next(self, now: float) -> Outgoing | TurnClosed | None:
        """The next frame to send, a turn given up, or None when nothing is playable yet (see ``wake_at``)."""
        if not self._turns:
            return None
        key, t = next(iter(self._turns.items()))
        if not t.playing:
            t.playing, t.progress_at = True, now
        q = t.chunks.get(t.next_chunk)
        # a later turn with audio ready takes over from one that has none; a newer epoch's, from any older one
        superseded = any(o.playable() and (o.epoch > t.epoch or (not q and o.epoch == t.epoch))
                         for o in self._turns.values() if o is not t)
        if superseded or (not q and now >= t.progress_at + self.gap_s):  # the same sum as wake_at's
            self._finish(key)
            return TurnClosed(t.turn_id, t.epoch, t.started, superseded)
        if not q:
            return None
        f = q.popleft()
        first = not t.started
        t.started, t.progress_at = True, now
        end_chunk = f.last_in_chunk
        end_turn = end_chunk and (f.final or t.final_chunk == t.next_chunk)
        if end_chunk:
            del t.chunks[t.next_chunk]
            t.frames_had.pop(t.next_chunk, None)
            t.next_chunk += 1
        if end_turn:
            self._finish(key)
        return Outgoing(f, first, end_chunk, end_turn)

    def ready(self) -> bool:
        """``next`` would give a frame of the turn being played now (no turn would be given up or take over)."""
        t = next(iter(self._turns.values()), None)
        if t is None or not t.playing or not t.playable():
            return False
        return not any(o.epoch > t.epoch and o.playable() for o in self._turns.values() if o is not t)

    def wake_at(self) -> float | None:
        """When ``next`` gives up the turn being played if no frame of it arrives first; None when no turn waits
        (or audio is ready now)."""
        t = next(iter(self._turns.values()), None)
        if t is None or not t.playing or t.playable():
            return None
        return t.progress_at + self.gap_s

    def resume(self, now: float) -> None:
        """Playout was held (paused): the gap of the turn being played counts from now."""
        for t in self._turns.values():
            t.progress_at = max(t.progress_at, now)

    def put_back(self, outgoings: Sequence[Outgoing], now: float) -> int:
        """A pause took back ``outgoings`` (frames sent, in the order sent, that the caller had not heard): they
        play again first, in that order, each in its turn and chunk. A turn they ended is open again (its end
        plays again), one given up after them is too (it is given up again once they have played, if it gets
        nothing more); a turn stays started, so its replayed first frame is not ``first_of_turn`` again. Frames of
        an epoch cleared since are dropped. Returns how many frames went back."""
        order: list[_Key] = []
        chunks: dict[tuple[_Key, int], list[AudioFrame]] = {}
        for o in outgoings:
            f = o.frame
            if f.epoch < self.epoch or f.turn_id is None or f.chunk is None:
                continue
            key = (f.turn_id, f.epoch)
            t = self._turns.get(key)
            if t is None:  # it finished (or was given up) when its last frame was taken
                self._over.pop(key, None)
                t = self._turns[key] = _Turn(f.turn_id, f.epoch, now, next_chunk=f.chunk)
            if key not in order:
                order.append(key)
            t.started = True
            t.next_chunk = min(t.next_chunk, f.chunk)
            if o.end_of_turn:
                t.final_chunk = f.chunk
            if f.frame is not None:
                t.frames_had[f.chunk] = max(t.frames_had.get(f.chunk, -1), f.frame)
            chunks.setdefault((key, f.chunk), []).append(f)
        for (key, chunk), frames in chunks.items():
            self._turns[key].chunks.setdefault(chunk, deque()).extendleft(reversed(frames))
        for key in reversed(order):
            self._turns.move_to_end(key, last=False)
        for i, t in enumerate(self._turns.values()):  # only the first turn is being played
            if i and t.playing:
                t.playing = False
        return sum(len(frames) for frames in chunks.values())

    def holds(self, turn_id: str, epoch: int) -> bool:
        """True while the turn is queued or being played (``put_back`` may have opened it again)."""
        return (turn_id, epoch) in self._turns

    def pending(self) -> bool:
        """True while a turn has started or has frames waiting."""
        return bool(self._turns)

    def clear(self, new_epoch: int) -> list[tuple[str, int]]:
        """Barge-in: drop every turn older than ``new_epoch`` (started or queued), in playout order, as
        (turn id, epoch); frames of older epochs are refused from now on. Turns of ``new_epoch`` or later whose
        audio arrived before the barge-in stay."""
        self.epoch = max(self.epoch, new_epoch)
        dropped = [key for key, t in self._turns.items() if t.epoch < self.epoch]
        for key in dropped:
            self._finish(key)
        return dropped

    def _finish(self, key: _Key) -> None:
        self._turns.pop(key, None)
        self._over[key] = None
        while len(self._over) > MAX_REMEMBERED_TURNS:
            self._over.popitem(last=False)
