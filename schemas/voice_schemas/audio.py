"""The bus audio frame format (real-time transport class).

PCM16 little-endian mono at 16 kHz, 20 ms per frame (640 bytes), sent as the raw message body.
Metadata travels in NATS headers, never in the body, so a frame is never JSON or base64.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16_000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = SAMPLES_PER_FRAME * 2  # 640

H_SEQ = "Voice-Seq"
H_EPOCH = "Voice-Epoch"
H_TS = "Voice-Ts"  # milliseconds of call media time (caller audio) or wall clock ms (agent audio)
H_TURN = "Voice-Turn"
H_CHUNK = "Voice-Chunk"  # reply chunk (sentence) index within the turn
H_LAST = "Voice-Last"  # "1" on the last frame of a reply chunk
H_FINAL = "Voice-Final"  # "1" on the last frame of the whole reply (turn)
H_TENANT = "Voice-Tenant"


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

    def headers(self) -> dict[str, str]:
        h = {H_SEQ: str(self.seq), H_EPOCH: str(self.epoch), H_TS: str(self.ts_ms)}
        if self.turn_id is not None:
            h[H_TURN] = self.turn_id
        if self.chunk is not None:
            h[H_CHUNK] = str(self.chunk)
        if self.last_in_chunk:
            h[H_LAST] = "1"
        if self.final:
            h[H_FINAL] = "1"
        return h

    @classmethod
    def from_message(cls, data: bytes, headers: dict[str, str] | None) -> AudioFrame:
        h = headers or {}
        chunk = h.get(H_CHUNK)
        return cls(
            pcm=data,
            seq=int(h.get(H_SEQ, "0")),
            epoch=int(h.get(H_EPOCH, "0")),
            ts_ms=int(h.get(H_TS, "0")),
            turn_id=h.get(H_TURN),
            chunk=int(chunk) if chunk is not None else None,
            last_in_chunk=h.get(H_LAST) == "1",
            final=h.get(H_FINAL) == "1",
        )
