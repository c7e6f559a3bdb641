"""The bus audio frame format (real-time transport class).

PCM16 little-endian mono at 16 kHz, 20 ms per frame (640 bytes), sent as the raw message body.
Metadata travels in NATS headers, never in the body, so a frame is never JSON or base64. A message may carry
several consecutive frames back to back (a multiple of 640 bytes; ``frames_in``): on ``audio.in`` and
``audio.played`` its headers are those of the last of them (``Voice-Seq``, ``Voice-Ts`` at the end of its audio);
on ``audio.out`` (frames of one reply chunk) ``Voice-Seq`` and ``Voice-Frame`` are the first frame's, the next ones
counting on from them, and ``Voice-Last`` / ``Voice-Final`` say that the message's last frame ends the chunk / the
reply (``AudioFrame.split``).
Also here: the caller's turn so far, as media answers stt's request for it (``TurnAudio``, partial transcripts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SAMPLE_RATE = 16_000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = SAMPLES_PER_FRAME * 2  # 640

H_SEQ = "Voice-Seq"
H_EPOCH = "Voice-Epoch"
H_TS = "Voice-Ts"  # ms of call media time at the frame's end (audio.in, audio.played) or wall clock ms (audio.out)
H_TURN = "Voice-Turn"
H_CHUNK = "Voice-Chunk"  # reply chunk (sentence) index within the turn
H_FRAME = "Voice-Frame"  # the frame's index within its reply chunk (a chunk synthesized again repeats it)
H_LAST = "Voice-Last"  # "1" on the last frame of a reply chunk
H_FINAL = "Voice-Final"  # "1" on the last frame of the whole reply (turn)
H_TENANT = "Voice-Tenant"
# audio.out: on the first frame of a reply's first chunk, the ms tts took from the chunk's arrival to that frame
# (the reply's text-to-speech stage; ingress hands it on in playout.started)
H_SYNTH = "Voice-Synth-Ms"
# audio.played: an empty message with this header says the caller heard nothing of the agent after Voice-Ts
# (a barge-in cleared the far end's queue, or the call ended): frames already reported past it were not heard
H_CUT = "Voice-Cut"


@dataclass(slots=True, frozen=True)
class AudioFrame:
    """One 20 ms PCM16 frame plus its metadata. A plain dataclass: 50 of these per second per call."""

    pcm: bytes
    seq: int
    epoch: int = 0
    ts_ms: int = 0
    turn_id: str | None = None
    chunk: int | None = None
    last_in_chunk: bool = False
    final: bool = False
    frame: int | None = None  # index within the chunk: a tts replica that takes a chunk over sends it again
    synth_ms: float | None = None  # H_SYNTH (audio.out, the first frame of a reply only)

    def headers(self) -> dict[str, str]:
        h = {H_SEQ: str(self.seq), H_EPOCH: str(self.epoch), H_TS: str(self.ts_ms)}
        if self.turn_id is not None:
            h[H_TURN] = self.turn_id
        if self.chunk is not None:
            h[H_CHUNK] = str(self.chunk)
        if self.frame is not None:
            h[H_FRAME] = str(self.frame)
        if self.last_in_chunk:
            h[H_LAST] = "1"
        if self.final:
            h[H_FINAL] = "1"
        if self.synth_ms is not None:
            h[H_SYNTH] = f"{self.synth_ms:.1f}"
        return h

    def split(self) -> list[AudioFrame]:
        """An ``audio.out`` message of several frames as its frames (one frame: itself). The last frame keeps any
        bytes over a whole number of frames (as a lone frame of odd size would)."""
        n = frames_in(self.pcm)
        if n == 1:
            return [self]
        out = []
        for i in range(n):
            last = i == n - 1
            out.append(AudioFrame(
                pcm=self.pcm[i * FRAME_BYTES:] if last else self.pcm[i * FRAME_BYTES:(i + 1) * FRAME_BYTES],
                seq=self.seq + i, epoch=self.epoch, ts_ms=self.ts_ms, turn_id=self.turn_id, chunk=self.chunk,
                last_in_chunk=self.last_in_chunk and last, final=self.final and last,
                frame=None if self.frame is None else self.frame + i, synth_ms=self.synth_ms if i == 0 else None))
        return out

    @classmethod
    def from_message(cls, data: bytes, headers: dict[str, str] | None) -> AudioFrame:
        h = headers or {}
        chunk, frame = h.get(H_CHUNK), h.get(H_FRAME)
        return cls(
            pcm=data,
            seq=int(h.get(H_SEQ, "0")),
            epoch=int(h.get(H_EPOCH, "0")),
            ts_ms=int(h.get(H_TS, "0")),
            turn_id=h.get(H_TURN),
            chunk=int(chunk) if chunk is not None else None,
            last_in_chunk=h.get(H_LAST) == "1",
            final=h.get(H_FINAL) == "1",
            frame=int(frame) if frame is not None else None,
            synth_ms=_ms(h.get(H_SYNTH)),
        )


@dataclass(frozen=True, slots=True)
class TurnAudioRequest:
    """stt asks media for the caller's turn in progress (``subjects.media_call_rpc(call_id, TURN_AUDIO)``, core
    request/reply). ``reader`` names the asking stt replica: media serves one reader per call at a time and answers
    the others ``taken``, so two replicas never re-decode the same turn. ``likely_final``: the ask of the replica
    making the turn's likely final transcript at a pause (``vad.speech_paused``): always answered, and it neither
    takes nor keeps the reader's place."""

    reader: str
    likely_final: bool = False

    def to_bytes(self) -> bytes:
        body: dict[str, object] = {"reader": self.reader}
        if self.likely_final:
            body["likely_final"] = True
        return json.dumps(body).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TurnAudioRequest:
        """Raises ``ValueError`` for anything but ``{"reader": "<non-empty string>"[, "likely_final": bool]}``."""
        try:
            body = json.loads(data)
            reader, likely_final = body.get("reader"), body.get("likely_final", False)
        except (ValueError, AttributeError) as e:
            raise ValueError("a turn audio request is a JSON object with a reader") from e
        if not isinstance(reader, str) or not reader or len(reader) > 128:
            raise ValueError("a turn audio request needs a reader (1-128 characters)")
        if not isinstance(likely_final, bool):
            raise ValueError("likely_final is true or false")
        return cls(reader, likely_final)


@dataclass(frozen=True, slots=True)
class TurnAudio:
    """media's answer to a ``TurnAudioRequest``: the caller's turn in progress so far, PCM16 little-endian mono at
    ``sample_rate`` from ``start_ms`` (the onset less the pre-roll, in call media time) to ``end_ms`` (now).

    ``turn_id`` None: no turn is in progress. ``taken``: another reader serves this call (no audio). ``speaking``:
    the caller is speaking now (else the turn is in a pause that may still end it). On the wire: the metadata as
    one line of JSON, a newline, then the raw samples (no base64)."""

    turn_id: str | None = None
    epoch: int = 0
    start_ms: int = 0
    end_ms: int = 0
    speaking: bool = False
    taken: bool = False
    sample_rate: int = SAMPLE_RATE
    pcm: bytes = b""

    def to_bytes(self) -> bytes:
        meta = {"turn_id": self.turn_id, "epoch": self.epoch, "start_ms": self.start_ms, "end_ms": self.end_ms,
                "speaking": self.speaking, "taken": self.taken, "sample_rate": self.sample_rate}
        return json.dumps(meta).encode() + b"\n" + self.pcm

    @classmethod
    def from_bytes(cls, data: bytes) -> TurnAudio:
        """Raises ``ValueError`` on anything ``to_bytes`` did not write."""
        head, sep, pcm = data.partition(b"\n")
        try:
            meta = json.loads(head) if sep else None
            if not isinstance(meta, dict):
                raise ValueError("no metadata line")
            turn_id = meta.get("turn_id")
            out = cls(turn_id=str(turn_id) if turn_id is not None else None, epoch=int(meta.get("epoch", 0)),
                      start_ms=int(meta.get("start_ms", 0)), end_ms=int(meta.get("end_ms", 0)),
                      speaking=bool(meta.get("speaking")), taken=bool(meta.get("taken")),
                      sample_rate=int(meta.get("sample_rate", SAMPLE_RATE)), pcm=pcm)
        except (TypeError, ValueError) as e:
            raise ValueError(f"not a turn audio answer: {e}") from e
        if len(pcm) % 2 or out.sample_rate <= 0:
            raise ValueError("not a turn audio answer: odd PCM16 length or no sample rate")
        return out


def frames_in(data: bytes) -> int:
    """How many 20 ms frames a message's body carries (at least one: a short body is one short frame)."""
    return max(1, len(data) // FRAME_BYTES)


def _ms(raw: str | None) -> float | None:
    """A header's milliseconds; None when absent or not a finite non-negative number (a header is never trusted)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0.0 <= value < 1e9 else None
