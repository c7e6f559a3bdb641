"""Stand-ins for the model stages (stt, brain, tts) that answer at once: the capacity bench's other end.

``python -m bench.standins`` runs one process that takes the place of the three model services on the bus, with
the same durable consumers (``STT_UTTERANCES``, ``BRAIN_TURNS``, ``TTS_REPLIES``: the same filters, acks and
JetStream traffic) and the same events out:

- stt: ``UtteranceCaptured`` -> a canned ``TranscriptFinalized`` (same turn, epoch and seq, an id derived from the
  utterance's, as the real stt does);
- brain: ``CallAnswered`` -> the greeting as one ``ReplyChunk``; ``TranscriptFinalized`` -> a canned reply, one
  ``ReplyChunk`` per sentence; ``PlayoutFinished`` -> ``TurnCompleted``. The real brain also keeps the call's
  history in KV (a few KV writes per turn event) and classifies intents; this stand-in keeps nothing but what it
  needs, so the figure it gives is for ingress + media + the bus;
- tts: ``ReplyChunk`` -> the chunk's audio, rendered once with piper at start (the real tts voice) and cut to
  20 ms PCM16 frames, published on ``call.<id>.audio.out`` with the real headers (``AudioFrame``: per-call seq,
  epoch, turn, chunk, frame index, last-in-chunk, final), one sentence at a time as the real tts does (the first
  clause of a reply on its own), yielding to the loop every 25 frames. ``STANDIN_TTS_RTF`` (default 0.05, a fast
  GPU voice) sleeps that share of each piece's audio length before publishing it; 0: all at once. Barge-ins and
  call ends stop a chunk between frames, as in the real tts.

No model runs here: the process costs the bus work of three services and little else. Each consumer takes up to
``STANDIN_CONCURRENCY`` (256) events at once, where the real services take 2-16 per replica: the stand-ins play
stages scaled out on other machines, so they never make calls wait on each other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pydantic import Field
from voice_runtime.handlers import Handlers
from voice_runtime.logging import get_logger
from voice_runtime.service import Service, run_service
from voice_runtime.settings import CommonSettings
from voice_schemas import Envelope, events, make, subjects
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE, AudioFrame
from voice_schemas.streams import BRAIN_TURNS, STT_UTTERANCES, TTS_REPLIES, ConsumerDef

log = get_logger(__name__)

GREETING = "Hello, thanks for calling. How can I help you today?"
TRANSCRIPT = "What time do you open on Sunday?"
REPLY = ("Sure, we open at ten in the morning on Sundays.", "On weekdays we open at eight.",
         "Is there anything else I can help you with?")
GREETING_TURN = "greeting"  # the brain's turn id of the greeting (voice_brain.conversation.GREETING)
_YIELD_EVERY = 25
_NS = uuid.UUID("0b6c9f5e-2d57-4f43-9a53-3b0c1f2a7d11")


class StandinSettings(CommonSettings):
    service_name: str = "standins"
    http_port: int = Field(0, validation_alias="HTTP_PORT")
    standin_tts_rtf: float = Field(0.05, ge=0.0, le=2.0, description="Seconds of 'synthesis' per second of audio")
    standin_max_calls: int = Field(10_000, ge=1, description="Calls whose tts state is kept at once")
    tts_frames_per_message: int = Field(5, ge=1, le=25, description="As the real tts: frames of one piece "
                                        "up to this many an audio.out message")
    standin_concurrency: int = Field(256, ge=1, le=4096, description="Events in flight per consumer: the stand-ins "
                                     "stand for stages scaled out elsewhere, so they never queue the calls")


def split_first_clause(text: str) -> list[str]:
    """The real tts speaks a reply's first clause on its own ("Sure," then the rest)."""
    head, sep, rest = text.partition(", ")
    return [head + ",", rest] if sep and len(rest.split()) >= 2 else [text]


class Frames:
    """Each text's audio rendered once (piper's joe voice, the real tts default) as 20 ms PCM16 frames."""

    def __init__(self) -> None:
        self._cache: dict[str, list[bytes]] = {}

    def render(self, text: str) -> list[bytes]:
        if text not in self._cache:
            from voice_devstack.speech import speech_int16

            pcm = speech_int16(text, SAMPLE_RATE, deterministic=True).astype("<i2").tobytes() if text.strip() else b""
            pcm += bytes(-len(pcm) % FRAME_BYTES or (0 if pcm else FRAME_BYTES))
            self._cache[text] = [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        return self._cache[text]


class _Call:
    __slots__ = ("ended", "epoch", "lock", "seq")

    def __init__(self) -> None:
        self.epoch = 0
        self.seq = 0
        self.ended = False
        self.lock = asyncio.Lock()


class Standins(Service):
    name = "standins"
    utterances = Handlers(STT_UTTERANCES)
    turns = Handlers(BRAIN_TURNS)
    replies = Handlers(TTS_REPLIES)

    def __init__(self, settings: StandinSettings) -> None:
        super().__init__(settings)
        self.settings: StandinSettings = settings
        self.frames = Frames()
        self.calls: dict[str, _Call] = {}
        self.ended: dict[str, None] = {}
        self.counts = {"utterances": 0, "replies": 0, "chunks": 0, "frames": 0, "turns_completed": 0}

    def consumer_for(self, handlers: Handlers) -> ConsumerDef:
        return handlers.consumer(concurrency=self.settings.standin_concurrency)

    async def on_start(self) -> None:
        for text in (GREETING, *REPLY):  # rendered before any call (the first clause too)
            for piece in split_first_clause(text):
                await asyncio.to_thread(self.frames.render, piece)
        await self.on_events(events.BargeIn.subject_pattern(), self._on_barge_in)
        await self.on_events(events.CallEnded.subject_pattern(), self._on_call_ended)

    def _call(self, call_id: str) -> _Call | None:
        if call_id in self.ended:
            return None
        c = self.calls.get(call_id)
        if c is None:
            if len(self.calls) >= self.settings.standin_max_calls:  # bounded: the oldest is forgotten
                self.calls.pop(next(iter(self.calls)))
            c = self.calls[call_id] = _Call()
        return c

    async def _on_barge_in(self, env: Envelope[events.BargeIn]) -> None:
        c = self._call(env.call_id)
        if c is not None:
            c.epoch = max(c.epoch, env.epoch)

    async def _on_call_ended(self, env: Envelope[events.CallEnded]) -> None:
        c = self.calls.pop(env.call_id, None)
        if c is not None:
            c.ended = True
        self.ended[env.call_id] = None
        while len(self.ended) > self.settings.standin_max_calls:
            self.ended.pop(next(iter(self.ended)))

    async def _publish(self, env: Envelope[Any], data: events.Payload, *, turn_id: str | None, epoch: int,
                       event_id: str) -> None:
        assert self.bus is not None
        await self.bus.publish(make(data, tenant_id=env.tenant_id, call_id=env.call_id, turn_id=turn_id,
                                    epoch=epoch, event_id=event_id))

    # ------------------------------------------------------------ stt
    @utterances.on(events.UtteranceCaptured)
    async def on_utterance(self, env: Envelope[events.UtteranceCaptured]) -> None:
        u = env.data
        self.counts["utterances"] += 1
        if env.call_id in self.ended:
            return
        out = events.TranscriptFinalized(
            utterance_id=u.utterance_id, text=TRANSCRIPT, language="en", start_ms=u.start_ms, end_ms=u.end_ms,
            stt_ms=0.0, end_of_turn_ms=u.end_of_turn_ms, speech_end_wall_ms=u.speech_end_wall_ms)
        assert self.bus is not None
        await self.bus.publish(make(out, tenant_id=env.tenant_id, call_id=env.call_id, turn_id=env.turn_id,
                                    epoch=env.epoch, seq=env.seq, event_id=uuid.uuid5(_NS, env.id).hex))

    # ------------------------------------------------------------ brain
    @turns.on(events.CallAnswered)
    async def on_call_answered(self, env: Envelope[events.CallAnswered]) -> None:
        if env.data.greet:
            await self._publish(env, events.ReplyChunk(index=0, text=GREETING, final=True), turn_id=GREETING_TURN,
                                epoch=0, event_id=f"{env.call_id}-greeting-0")

    @turns.on(events.TranscriptFinalized)
    async def on_transcript(self, env: Envelope[events.TranscriptFinalized]) -> None:
        if not env.data.text.strip() or env.call_id in self.ended:
            return
        turn_id = env.turn_id or subjects.new_id()
        self.counts["replies"] += 1
        for i, sentence in enumerate(REPLY):
            await self._publish(env, events.ReplyChunk(index=i, text=sentence, final=i == len(REPLY) - 1,
                                                       speech_end_wall_ms=env.data.speech_end_wall_ms),
                                turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{turn_id}-{i}")

    @turns.on(events.PlayoutFinished)
    async def on_playout_finished(self, env: Envelope[events.PlayoutFinished]) -> None:
        if not env.turn_id:
            return
        greeting = env.turn_id == GREETING_TURN
        heard = [GREETING] if greeting else [REPLY[i] for i in env.data.heard_chunks if 0 <= i < len(REPLY)]
        self.counts["turns_completed"] += 1
        await self._publish(env, events.TurnCompleted(caller_text=None if greeting else TRANSCRIPT,
                                                      agent_text=" ".join(heard), interrupted=env.data.cleared),
                            turn_id=env.turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{env.turn_id}-completed")

    @turns.on(events.CallStarted, events.CallEnded, events.SupervisorWhispered, events.DtmfReceived,
              events.ToolApprovalDecided, events.TransferFailed, events.PlayoutStarted, events.DtmfSent,
              events.HoldEnded, events.PlayoutMarked)
    async def on_other(self, env: Envelope[Any]) -> None:
        """The real brain updates the call's history on these; the stand-in only acks them."""

    # ------------------------------------------------------------ tts
    @replies.on(events.ReplyChunk)
    async def on_reply_chunk(self, env: Envelope[events.ReplyChunk]) -> None:
        chunk = env.data
        if chunk.text_only:
            return
        c = self._call(env.call_id)
        if c is None:
            return
        c.epoch = max(c.epoch, env.epoch)
        async with c.lock:
            if c.ended or env.epoch < c.epoch:
                return
            self.counts["chunks"] += 1
            await self._speak(env, chunk, c)

    async def _speak(self, env: Envelope[events.ReplyChunk], chunk: events.ReplyChunk, c: _Call) -> None:
        assert self.bus is not None
        subject = subjects.audio_out(env.call_id)
        pieces = split_first_clause(chunk.text) if chunk.index == 0 else [chunk.text]
        n, sent = sum(len(self.frames.render(p)) for p in pieces), 0  # render: at least one frame each
        for p in pieces:
            piece = self.frames.render(p)
            if self.settings.standin_tts_rtf > 0:  # the voice "synthesizes" this piece
                await asyncio.sleep(len(piece) * 0.02 * self.settings.standin_tts_rtf)
            per = self.settings.tts_frames_per_message
            for i in range(0, len(piece), per):
                if c.ended or env.epoch < c.epoch:
                    return
                group = piece[i : i + per]
                last = sent + len(group) == n
                frame = AudioFrame(pcm=b"".join(group), seq=c.seq + 1, epoch=env.epoch,
                                   ts_ms=int(time.time() * 1000), turn_id=env.turn_id, chunk=chunk.index,
                                   last_in_chunk=last, final=last and chunk.final, frame=sent)
                await self.bus.publish_nowait(subject, frame.pcm, frame.headers())
                c.seq += len(group)
                before, sent = sent, sent + len(group)
                self.counts["frames"] += len(group)
                if sent // _YIELD_EVERY != before // _YIELD_EVERY:
                    await asyncio.sleep(0)


def main() -> None:
    run_service(lambda: Standins(StandinSettings()))


if __name__ == "__main__":
    main()

