"""The brain service: wiring only. Each handler loads the call's history, applies one conversation operation
(``conversation.py``), and publishes what follows; a caller turn streams its reply through ``reply.py`` with
the agent's chat model (``chat/``) at the endpoint ``endpoints.py`` picks for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Transient
from voice_runtime.handlers import Handlers
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.service import Service
from voice_schemas import AgentConfig, Envelope, events, make, subjects
from voice_schemas.streams import BRAIN_TURNS, KV_HISTORY, KV_SECRETS

from .chat import ChatLimits, ChatModelProvider, ChatRequest, Delta, Endpoint, load_provider
from .conversation import (
    END_CALL_TOOL,
    GREETING,
    CallHistory,
    HistoryLimits,
    SentChunk,
    TurnState,
    turn_completed,
)
from .endpoints import AgentEndpoints, refusal_reason
from .history import HistoryStore
from .reply import ReplySuperseded, stream_reply
from .settings import BrainSettings

log = get_logger(__name__)
tracer = trace.get_tracer("voice.brain")


def _now_ms() -> float:
    return time.time() * 1000


@dataclass(frozen=True, slots=True)
class _ActiveReply:
    turn_id: str
    epoch: int
    task: asyncio.Task[None]
    superseded: asyncio.Event  # set: a newer caller turn; the reply closes with a final chunk


async def _failing(error: Exception) -> AsyncIterator[Delta]:
    """A completion that fails at once (the endpoint was refused): the reply apologizes."""
    raise error
    yield Delta()  # an async generator


class BrainService(Service):
    name = "brain"
    turns = Handlers(BRAIN_TURNS)

    def __init__(self, settings: BrainSettings, chat: ChatModelProvider | None = None) -> None:
        super().__init__(settings)
        self.settings: BrainSettings = settings
        self.chat: ChatModelProvider = chat or load_provider(settings.llm_provider, ChatLimits(
            first_token_timeout_s=settings.llm_first_token_timeout_s,
            total_timeout_s=settings.llm_total_timeout_s))
        self.active: dict[str, _ActiveReply] = {}  # call id -> the reply this replica is streaming
        self.history: HistoryStore | None = None
        self.directory: AgentDirectory | None = None
        self.endpoints: AgentEndpoints | None = None
        self._egress = settings.egress_policy()
        self._box = settings.secret_box()

    async def on_start(self) -> None:
        s = self.settings
        self.history = HistoryStore(self.kv[KV_HISTORY.bucket], HistoryLimits(window_messages=s.max_history_messages))
        self.directory = AgentDirectory(self.kv["agents"], self.kv["numbers"], s)
        self.endpoints = AgentEndpoints(platform=Endpoint(s.llm_base_url, s.llm_api_key.get_secret_value()),
                                        egress=self._egress, box=self._box, secrets=self.kv[KV_SECRETS.bucket])
        # every replica hears barge-ins: whichever streams the call's reply cancels it
        await self.on_events(events.BargeIn.subject_pattern(), self._on_barge_in)

    async def on_stop(self) -> None:
        for active in list(self.active.values()):
            active.task.cancel()

    async def stop(self) -> None:
        await super().stop()
        await self.chat.aclose()

    # ------------------------------------------------------------ helpers
    async def _agent(self, h: CallHistory) -> AgentConfig:
        assert self.directory is not None
        agent = await self.directory.version(h.agent_id, h.agent_version)
        if agent is None:
            raise Transient(f"agent {h.agent_id} v{h.agent_version} not in KV yet")
        return agent

    async def _publish(self, env: Envelope[Any], data: Any, *, turn_id: str | None, epoch: int,
                       event_id: str | None = None) -> None:
        assert self.bus is not None
        await self.bus.publish(make(data, tenant_id=env.tenant_id, call_id=env.call_id, turn_id=turn_id,
                                    epoch=epoch, event_id=event_id))

    def _cancel_reply(self, call_id: str, turn_id: str | None = None, older_than_epoch: int | None = None) -> None:
        active = self.active.get(call_id)
        if active is None:
            return
        if turn_id is not None and active.turn_id != turn_id:
            return
        if older_than_epoch is not None and active.epoch >= older_than_epoch:
            return
        active.task.cancel()

    # ------------------------------------------------------------ call start: greeting
    @turns.on(events.CallStarted)
    async def on_call_started(self, env: Envelope[events.CallStarted]) -> None:
        assert self.history is not None
        h = CallHistory(call_id=env.call_id, tenant_id=env.tenant_id, agent_id=env.data.agent_id,
                        agent_version=env.data.agent_version, text_only=env.data.channel == events.Channel.chat)
        await self._agent(h)  # fail early (and retry) while the agent is not in KV yet
        await self.history.create(h)  # False on redelivery: history already there

    @turns.on(events.CallAnswered)
    async def on_call_answered(self, env: Envelope[events.CallAnswered]) -> None:
        """The caller's media is up: greet with the agent's first message."""
        assert self.history is not None
        h = await self.history.get(env.call_id)
        if h is None:
            raise Transient("call history not created yet")
        agent = await self._agent(h)
        text = agent.greeting()  # the recording notice (when the agent records with one), then first_message
        if not text:
            return
        now = _now_ms()
        applied = await self.history.update(env.call_id, lambda x: x.greet(text, now))
        if applied is not None and applied[1]:
            await self._publish(env, events.ReplyChunk(index=0, text=text, final=True, voice=agent.voice,
                                                       text_only=h.text_only),
                                turn_id=GREETING, epoch=0, event_id=f"{env.call_id}-greeting-0")
        if h.text_only:  # also on a redelivery: the greeting may have been sent but not yet completed
            await self._text_delivered(env, GREETING)

    # ------------------------------------------------------------ a caller turn
    @turns.on(events.TranscriptFinalized)
    async def on_transcript(self, env: Envelope[events.TranscriptFinalized]) -> None:
        assert self.history is not None
        if not env.data.text.strip():
            return
        turn_id = env.turn_id or subjects.new_id()
        applied = await self.history.update(env.call_id, lambda h: h.add_caller_turn(turn_id, env.epoch, env.data))
        if applied is None:
            raise Transient("call history not created yet")  # CallStarted not processed yet
        h, fresh = applied
        if not fresh:
            return  # redelivered transcript, ended call or a stale epoch
        # a newer caller turn supersedes an unfinished reply: here at once; on another replica at its next chunk
        # (the history now names this turn as the call's latest)
        previous = self.active.get(env.call_id)
        if previous is not None:
            previous.superseded.set()
        agent = await self._agent(h)
        superseded = asyncio.Event()
        task = asyncio.create_task(self._reply(env, h, agent, turn_id, superseded))
        self.active[env.call_id] = _ActiveReply(turn_id, env.epoch, task, superseded)
        try:
            await asyncio.wait({task})  # the transcript is acked once its reply is out (or cancelled)
        finally:
            active = self.active.get(env.call_id)
            if active is not None and active.turn_id == turn_id:
                self.active.pop(env.call_id, None)

    async def _reply(self, env: Envelope[Any], h: CallHistory, agent: AgentConfig, turn_id: str,
                     superseded: asyncio.Event) -> None:
        history, endpoints = self.history, self.endpoints
        assert history is not None and endpoints is not None
        request = ChatRequest(messages=h.prompt(agent.system_prompt), temperature=agent.llm.temperature,
                              max_tokens=agent.llm.max_tokens, tools=(END_CALL_TOOL,))
        speech_end_wall_ms = h.turns[turn_id].speech_end_wall_ms
        with tracer.start_as_current_span("brain llm", attributes={
            "call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": turn_id, "agent_id": agent.id,
            "agent_version": agent.version,
        }) as span:

            async def emit(chunk: SentChunk) -> None:
                if chunk.superseded:
                    await history.update(env.call_id, lambda x: x.close_superseded(turn_id, chunk.index))
                else:
                    applied = await history.update(env.call_id, lambda x: x.record_chunk(turn_id, chunk))
                    if applied is None or not applied[1]:
                        raise ReplySuperseded  # a newer caller turn (any replica's) or the call ended
                await self._publish(env, events.ReplyChunk(index=chunk.index, text=chunk.text, final=chunk.final,
                                                           voice=agent.voice, speech_end_wall_ms=speech_end_wall_ms,
                                                           hangup_after=chunk.final and chunk.hang_up,
                                                           text_only=h.text_only),
                                    turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{turn_id}-{chunk.index}")
                if h.text_only and chunk.final:  # no playout: the reply is complete once its text is out
                    await self._text_delivered(env, turn_id)
                if chunk.timings is not None:
                    span.add_event("first_sentence")
                    metrics.STAGE_SECONDS.labels(self.name, "llm_first_sentence").observe(
                        (chunk.timings.first_sentence_wall_ms - chunk.timings.llm_start_wall_ms) / 1000)

            try:
                endpoint = await endpoints.for_agent(env.tenant_id, agent.llm)
            except Exception as e:  # EndpointRefused (no key to be had): the apology, like any model failure
                metrics.ERRORS.labels(self.name, "llm_endpoint_refused").inc()
                deltas = _failing(e)
            else:
                deltas = self.chat.model(endpoint, agent.llm.model or self.settings.llm_model).stream(request)
            try:
                outcome = await stream_reply(deltas, emit, apology=self.settings.apology, stop=superseded)
            except asyncio.CancelledError:
                span.add_event("cancelled")
                raise
            if outcome.superseded:
                span.add_event("superseded")
                log.info("reply_superseded", call_id=env.call_id, turn_id=turn_id, chunks=outcome.chunks)
            if outcome.error is not None:
                log.warning("reply_failed", call_id=env.call_id, turn_id=turn_id, agent_id=agent.id,
                            error_type=type(outcome.error).__name__, reason=refusal_reason(outcome.error))
                span.record_exception(outcome.error)
        if outcome.hang_up:
            await self._publish(env, events.HangUp(after_playout=True), turn_id=turn_id, epoch=env.epoch,
                                event_id=f"{env.call_id}-{turn_id}-hangup")

    # ------------------------------------------------------------ what the caller heard
    @turns.on(events.PlayoutStarted)
    async def on_playout_started(self, env: Envelope[events.PlayoutStarted]) -> None:
        assert self.history is not None
        if env.turn_id:
            await self.history.update(env.call_id,
                                      lambda h: h.note_first_audio(env.turn_id, env.data.first_audio_wall_ms))

    @turns.on(events.PlayoutMarked)
    async def on_playout_marked(self, env: Envelope[events.PlayoutMarked]) -> None:
        assert self.history is not None
        if env.turn_id:
            await self.history.update(env.call_id, lambda h: h.mark_heard(env.turn_id, env.data.chunk))

    @turns.on(events.PlayoutFinished)
    async def on_playout_finished(self, env: Envelope[events.PlayoutFinished]) -> None:
        assert self.history is not None
        d = env.data
        if not env.turn_id:
            return
        applied = await self.history.update(env.call_id, lambda h: h.settle(env.turn_id, d.heard_chunks, d.cleared))
        if applied is None:
            return
        h, turn = applied
        if turn is None:
            return  # completed and published before (a redelivered report)
        if d.cleared:
            self._cancel_reply(env.call_id, turn_id=turn.turn_id)
        await self._settled(env, h, turn)

    async def _text_delivered(self, env: Envelope[Any], turn_id: str) -> None:
        """A text-only call: the turn's reply has been sent in full, so it is complete (``deliver_text``)."""
        assert self.history is not None
        applied = await self.history.update(env.call_id, lambda h: h.deliver_text(turn_id))
        if applied is None:
            return
        h, turn = applied
        if turn is not None:
            await self._settled(env, h, turn)

    async def _settled(self, env: Envelope[Any], h: CallHistory, turn: TurnState) -> None:
        assert self.history is not None
        await self._turn_completed(env, h, turn)
        # published: keep only its id (redelivery detection), so a call's history does not grow with its turns
        await self.history.update(env.call_id, lambda x: x.forget(turn.turn_id))

    async def _turn_completed(self, env: Envelope[Any], h: CallHistory, t: TurnState) -> None:
        done = turn_completed(h, t, _now_ms())
        if done.latency.voice_to_voice_ms is not None:
            metrics.STAGE_SECONDS.labels(self.name, "voice_to_voice").observe(done.latency.voice_to_voice_ms / 1000)
        await self._publish(env, done, turn_id=t.turn_id, epoch=t.epoch,
                            event_id=f"{env.call_id}-{t.turn_id}-completed")

    # ------------------------------------------------------------ barge-in, notes, end
    async def _on_barge_in(self, env: Envelope[Any]) -> None:
        self._cancel_reply(env.call_id, older_than_epoch=env.epoch)

    async def _note(self, env: Envelope[Any], text: str) -> None:
        assert self.history is not None
        await self.history.update(env.call_id, lambda h: h.add_note(text))

    @turns.on(events.SupervisorWhispered)
    async def on_whisper(self, env: Envelope[events.SupervisorWhispered]) -> None:
        """A supervisor's instruction: kept in the call's history as a supervisor note (by event id, so a redelivery
        adds nothing) and placed in every later prompt; never a reply chunk, so never spoken."""
        assert self.history is not None
        applied = await self.history.update(env.call_id, lambda h: h.add_supervisor_note(env.id, env.data.text))
        if applied is None:
            log.info("whisper_without_history", call_id=env.call_id)  # the call has ended (history deleted)

    @turns.on(events.DtmfReceived)
    async def on_dtmf(self, env: Envelope[events.DtmfReceived]) -> None:
        await self._note(env, f"The caller pressed the key {env.data.digit}.")

    @turns.on(events.ToolApprovalDecided)
    async def on_tool_approval(self, env: Envelope[events.ToolApprovalDecided]) -> None:
        """Recorded as a note for the model. Holding a tool call until a supervisor decides (the approval flow)
        arrives with the tools issue; until then no tool waits on a decision, so there is nothing to resume."""
        d = env.data
        verdict = "approved" if d.approved else "rejected"
        comment = f" Comment: {d.comment}" if d.comment else ""
        await self._note(env, f"A supervisor {verdict} the tool call {d.tool_call_id}.{comment}")

    @turns.on(events.CallEnded)
    async def on_call_ended(self, env: Envelope[events.CallEnded]) -> None:
        assert self.history is not None
        active = self.active.pop(env.call_id, None)
        if active is not None:
            active.task.cancel()
        applied = await self.history.update(env.call_id, lambda h: h.end())
        if applied is None:
            return
        h, unfinished = applied
        for t in unfinished:
            try:
                await self._turn_completed(env, h, t)
            except Exception as e:
                log.warning("turn_completed_failed", call_id=env.call_id, turn_id=t.turn_id, error=safe_error(e, 200))
        await self.history.delete(env.call_id)  # the record now lives in PostgreSQL
