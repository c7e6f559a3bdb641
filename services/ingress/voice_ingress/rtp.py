"""RTP for SIP calls (RFC 3550), pure: packets, the caller's jitter buffer, RFC 4733 DTMF, the agent's playout queue.

- ``parse`` / ``RtpSender``: the fixed header with CSRCs, header extension and padding read; ours is sent with a
  random SSRC and starting sequence number and timestamp, +1 and +160 per 20 ms packet on a steady clock, the
  marker bit on the first packet only.
- ``JitterBuffer``: the caller's packets in sequence order. An in-order packet leaves at once (no added delay);
  one that arrives after a gap waits at most ``max_wait_s`` for the missing ones (less when ``capacity`` packets are
  held), then the gap is skipped and filled with silence (up to ``MAX_CONCEALED`` packets) so the caller's audio
  keeps its timing. Duplicates and packets older than what has left are dropped.
- ``DtmfReceiver``: RFC 4733 telephone events. An event is known by its RTP timestamp (and its code: replayed
  captures reuse timestamps); it is reported once, when its first End packet arrives (the End packet is sent three
  times), or when a later event starts without its End having arrived. The marker bit is not needed: some gateways
  never set it.
- ``PlayoutQueue``: the agent's G.711 payloads and the marks between them, bounded, handed out one per 20 ms tick;
  a mark is reported once every payload queued before it has been handed out; ``clear`` drops it all. Keys pressed
  towards the far end (``DtmfTick``, RFC 4733 events) queue in the same order, one tick each.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz
MAX_CONCEALED = 10  # a longer gap is skipped without filling it (the caller's side paused or restarted)
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 events 0-15
MAX_REMEMBERED_EVENTS = 16


class RtpError(ValueError):
    """Not an RTP packet we can read."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False


def parse(data: bytes) -> RtpPacket:
    """One datagram -> an RTP packet; ``RtpError`` for anything else (RTCP on the same port, garbage)."""
    if len(data) < HEADER.size:
        raise RtpError("shorter than an RTP header")
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("not RTP version 2")
    pt = b1 & 0x7F
    if 72 <= pt <= 76:
        raise RtpError("RTCP")
    offset = HEADER.size + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < offset + 4:
            raise RtpError("truncated header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if b0 & 0x20:  # padding: the last byte counts it
        if end == 0 or data[-1] == 0:
            raise RtpError("bad padding")
        end -= data[-1]
    if offset > end:
        raise RtpError("truncated packet")
    return RtpPacket(payload_type=pt, seq=seq, timestamp=ts, ssrc=ssrc, payload=data[offset:end],
                     marker=bool(b1 & 0x80))


def build(packet: RtpPacket) -> bytes:
    return HEADER.pack(RTP_VERSION << 6, (0x80 if packet.marker else 0) | (packet.payload_type & 0x7F),
                       packet.seq & 0xFFFF, packet.timestamp & 0xFFFFFFFF, packet.ssrc & 0xFFFFFFFF) + packet.payload


class RtpSender:
    """Our outbound stream: one packet per 20 ms tick, sequence +1 and timestamp +160 each, even across silence."""

    def __init__(self, payload_type: int, *, rng: random.Random | None = None) -> None:
        r = rng or random.SystemRandom()
        self.payload_type = payload_type
        self.ssrc = r.getrandbits(32)
        self.seq = r.getrandbits(16)
        self.timestamp = r.getrandbits(32)
        self._first = True

    def packet(self, payload: bytes, *, payload_type: int | None = None, marker: bool = False,
               timestamp: int | None = None) -> bytes:
        """The next packet (``timestamp``: a DTMF event's own, which stays fixed for the event's packets)."""
        p = RtpPacket(payload_type=self.payload_type if payload_type is None else payload_type, seq=self.seq,
                      timestamp=self.timestamp if timestamp is None else timestamp, ssrc=self.ssrc, payload=payload,
                      marker=marker or self._first)
        self._first = False
        self.seq = (self.seq + 1) & 0xFFFF
        return build(p)

    def tick(self) -> None:
        """20 ms of media time passed (whether or not a packet was sent)."""
        self.timestamp = (self.timestamp + SAMPLES_PER_PACKET) & 0xFFFFFFFF


# ---------------------------------------------------------------- caller -> us
def _seq_after(a: int, b: int) -> int:
    """How far sequence number ``a`` is after ``b`` (negative: before), modulo 2^16."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


class JitterBuffer:
    """The caller's media packets back in order, with as little delay as reordering allows.

    ``push`` a packet as it arrives, then take what may leave with ``pop(now)``; call ``pop`` on a timer too, so a
    packet held behind a gap leaves once the wait is over. ``pop`` returns payloads; ``None`` stands for a lost
    packet (the transport plays silence for it).
    """

    def __init__(self, *, max_wait_s: float = 0.06, capacity: int = 50) -> None:
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self._next: int | None = None  # the sequence number expected next
        self._held: dict[int, tuple[float, bytes]] = {}  # seq -> (arrival time, payload)
        self.late = 0
        self.duplicates = 0
        self.lost = 0
        self.overflow = 0

    def __len__(self) -> int:
        return len(self._held)

    def reset(self) -> None:
        """The stream restarted (a new SSRC): forget its order."""
        self._next = None
        self._held.clear()

    def push(self, seq: int, payload: bytes, now: float) -> None:
        if self._next is None:
            self._next = seq
        ahead = _seq_after(seq, self._next)
        if ahead < 0:
            self.late += 1
            return
        if ahead > 0x4000:  # a jump of minutes: the sender restarted its numbering
            self.reset()
            self._next = seq
        if seq in self._held:
            self.duplicates += 1
            return
        if len(self._held) >= self.capacity:
            self.overflow += 1  # ``pop`` was not called: the newest is dropped, the bound holds
            return
        self._held[seq] = (now, payload)

    def pop(self, now: float) -> list[bytes | None]:
        out: list[bytes | None] = []
        while self._held and self._next is not None:
            item = self._held.pop(self._next, None)
            if item is not None:
                out.append(item[1])
                self._next = (self._next + 1) & 0xFFFF
                continue
            oldest = min(t for t, _ in self._held.values())
            if now - oldest < self.max_wait_s and len(self._held) < self.capacity:
                break  # the missing packet may still come
            out += self._skip_to_oldest()
        return out

    def _skip_to_oldest(self) -> list[bytes | None]:
        """Give up on the gap before the earliest held packet: silence for a short one."""
        assert self._next is not None
        first = min(self._held, key=lambda s: _seq_after(s, self._next or 0))
        gap = _seq_after(first, self._next)
        self.lost += gap
        self._next = first
        return [None] * gap if gap <= MAX_CONCEALED else []


class DtmfReceiver:
    """RFC 4733 telephone-event payloads -> each pressed digit once."""

    def __init__(self) -> None:
        self._reported: deque[tuple[int, int]] = deque(maxlen=MAX_REMEMBERED_EVENTS)  # (timestamp, event) reported
        self._open: tuple[tuple[int, int], str] | None = None  # an event whose End has not come, and its digit

    def push(self, timestamp: int, payload: bytes) -> list[str]:
        """The digits this packet completes (none, one, or a previous one whose End was lost, then this one)."""
        if len(payload) < 4:
            return []
        event, flags = payload[0], payload[1]
        digit = DTMF_EVENTS[event] if event < len(DTMF_EVENTS) else None
        key = (timestamp, event)
        if key in self._reported:
            return []  # a repeated End (or a late packet) of an event already reported
        out: list[str] = []
        if self._open is not None and self._open[0] != key:
            out.append(self._open[1])  # a new event started: the previous one's End packets were all lost
            self._reported.append(self._open[0])
            self._open = None
        if digit is None:
            return out
        if flags & 0x80:  # End bit
            out.append(digit)
            self._reported.append(key)
            self._open = None
        else:
            self._open = (key, digit)
        return out


# ---------------------------------------------------------------- us -> caller
@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


DTMF_VOLUME = 10  # -10 dBm0, the level RFC 4733 §2.3.4 suggests
END_REPEATS = 3  # the End packet is sent three times (RFC 4733 §2.5.1.4)


@dataclass(frozen=True, slots=True)
class DtmfTick:
    """20 ms of one key pressed as an RFC 4733 event: tick ``index`` of ``ticks`` (the last one ends it)."""

    event: int
    index: int
    ticks: int

    @property
    def end(self) -> bool:
        return self.index == self.ticks - 1

    def payload(self) -> bytes:
        """The telephone-event payload: event, E bit and volume, the duration so far in 8 kHz samples."""
        duration = (self.index + 1) * SAMPLES_PER_PACKET
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | DTMF_VOLUME, duration)


def dtmf_ticks(digits: str, *, tone_ms: int = 100, gap_ms: int = 60) -> list[DtmfTick | None]:
    """Each key as ``tone_ms`` of event ticks, then ``gap_ms`` of ticks without one (None: silence)."""
    tone, gap = max(1, tone_ms // 20), gap_ms // 20
    out: list[DtmfTick | None] = []
    for d in digits:
        event = DTMF_EVENTS.index(d)
        out += [DtmfTick(event, i, tone) for i in range(tone)]
        out += [None] * gap
    return out


@dataclass(frozen=True, slots=True)
class _Gap:
    payload: bytes  # silence between keys


class PlayoutQueue:
    """The agent's 20 ms payloads and marks, in order, bounded; one payload per tick."""

    def __init__(self, *, max_payloads: int = 50, max_marks: int = 64, max_keys: int = 512) -> None:
        self.max_payloads, self.max_marks, self.max_keys = max_payloads, max_marks, max_keys
        self._queue: deque[bytes | _Mark | DtmfTick | _Gap] = deque()
        self._payloads = 0
        self._keys = 0
        self._marks = 0
        self.dropped = 0
        self._early: list[str] = []  # marks reported without waiting (the queue of marks was full)

    @property
    def queued(self) -> int:
        return self._payloads

    def put(self, payload: bytes) -> None:
        if self._payloads >= self.max_payloads:
            self.dropped += 1  # nothing is taken (the clock stalled): the newest is dropped
            return
        self._queue.append(payload)
        self._payloads += 1

    def put_key(self, tick: DtmfTick | bytes) -> None:
        """One tick of keys pressed (an event, or the gap's silence), bounded apart from the agent's audio: a
        command's keys are queued at once, its audio only a few frames ahead."""
        if self._keys >= self.max_keys:
            self.dropped += 1
            return
        self._queue.append(tick if isinstance(tick, DtmfTick) else _Gap(tick))
        self._keys += 1

    def put_mark(self, name: str) -> None:
        if self._marks >= self.max_marks:
            self._early.append(name)
            return
        self._queue.append(_Mark(name))
        self._marks += 1

    def clear(self) -> None:
        """Drop the agent's audio and marks; keys being pressed stay (a barge-in does not cut a key in half)."""
        kept = [i for i in self._queue if isinstance(i, DtmfTick | _Gap)]
        self._queue = deque(kept)
        self._payloads = self._marks = 0
        self._keys = len(kept)

    def take(self) -> tuple[bytes | DtmfTick | None, list[str]]:
        """The payload for this tick (None: nothing queued) and the marks passed on the way: each mark whose audio
        has all been handed out by the previous ticks."""
        marks, self._early = self._early, []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Mark):
                self._marks -= 1
                marks.append(item.name)
                continue
            if isinstance(item, DtmfTick):
                self._keys -= 1
                return item, marks
            if isinstance(item, _Gap):
                self._keys -= 1
                return item.payload, marks
            self._payloads -= 1
            return item, marks
        return None, marks
