"""The brain service: greets, takes turns with the LLM, tracks what the caller heard."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import trace
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Transient
from voice_runtime.logging import get_logger
from voice_runtime.service import Service
from voice_schemas import AgentConfig, Envelope, events, make, parse, subjects
from voice_schemas.streams import BRAIN_TURNS, KV_HISTORY

from .chunking import SentenceChunker
from .history import CallHistory, HistoryStore, TurnState
from .llm import END_CALL_TOOL, ChatModel, OpenAIChatModel
from .settings import BrainSettings

log = get_logger(__name__)
tracer = trace.get_tracer("voice.brain")
GREETING = "greeting"


def _iso(ms: float | None = None) -> str:
    return (datetime.fromtimestamp(ms / 1000, UTC) if ms else datetime.now(UTC)).isoformat()


def _ms(a: float | None, b: float | None) -> float | None:
    return round(b - a, 1) if a and b else None


class BrainService(Service):
    name = "brain"
    owns_consumers = (BRAIN_TURNS,)

    def __init__(self, settings: BrainSettings, model: ChatModel | None = None) -> None:
        super().__init__(settings)
        self.settings: BrainSettings = settings
        self.model: ChatModel = model or OpenAIChatModel(settings.llm_api_key.get_secret_value(),
                                                         settings.llm_total_timeout_s)
        self.active: dict[str, tuple[str, int, asyncio.Task[None]]] = {}  # call -> (turn, epoch, task)
        self.history: HistoryStore | None = None
        self.directory: AgentDirectory | None = None

    async def on_start(self) -> None:
        assert self.bus is not None
        self.history = HistoryStore(self.kv[KV_HISTORY.bucket])
        self.directory = AgentDirectory(self.kv["agents"], self.kv["numbers"], self.settings)
        # every replica hears barge-ins: whichever runs the call's completion cancels it
        await self.subscribe(events.BargeIn.subject_pattern(), self._on_barge_in)
        await self.consume(BRAIN_TURNS, self.handle)

    async def on_stop(self) -> None:
        for _, _, task in list(self.active.values()):
            task.cancel()

    # ------------------------------------------------------------ dispatch
    async def handle(self, env: Envelope[Any], msg: Msg) -> None:
        d = env.data
        if isinstance(d, events.CallStarted):
            await self.on_call_started(env, d)
        elif isinstance(d, events.CallAnswered):
            await self.on_call_answered(env)
        elif isinstance(d, events.TranscriptFinalized):
            await self.on_transcript(env, d)
        elif isinstance(d, events.PlayoutStarted):
            await self._update_turn(env, lambda t: setattr(t, "first_audio_wall_ms", d.first_audio_wall_ms)
                                    if t.first_audio_wall_ms is None else None)
        elif isinstance(d, events.PlayoutMarked):
            await self._update_turn(env, lambda t: t.heard_chunks.append(d.chunk))
        elif isinstance(d, events.PlayoutFinished):
            await self.on_playout_finished(env, d)
        elif isinstance(d, events.CallEnded):
            await self.on_call_ended(env)
        elif isinstance(d, events.SupervisorWhispered):
            await self._note(env, f"Instruction from your supervisor (the caller cannot hear this): {d.text}")
        elif isinstance(d, events.DtmfReceived):
            await self._note(env, f"The caller pressed the key {d.digit}.")

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

    # ------------------------------------------------------------ call start: greeting
    async def on_call_started(self, env: Envelope[Any], d: events.CallStarted) -> None:
        assert self.history is not None
        h = CallHistory(call_id=env.call_id, tenant_id=env.tenant_id, agent_id=d.agent_id,
                        agent_version=d.agent_version)
        await self._agent(h)  # fail early (and retry) while the agent is not in KV yet
        await self.history.create(h)  # False on redelivery: history already there

    async def on_call_answered(self, env: Envelope[Any]) -> None:
        """The caller's media is up: greet with the agent's first message."""
        assert self.history is not None
        h = await self.history.get(env.call_id)
        if h is None:
            raise Transient("call history not created yet")
        agent = await self._agent(h)
        first_message = agent.first_message
        if not first_message:
            return
        fresh = False

        def greet(x: CallHistory) -> None:
            nonlocal fresh
            if GREETING in x.turns:
                return
            fresh = True
            x.turns[GREETING] = TurnState(turn_id=GREETING, chunks=[first_message], reply_done=True,
                                          agent_started_at=_iso(), first_sentence_wall_ms=time.time() * 1000)
            x.messages.append({"role": "assistant", "content": first_message, "turn_id": GREETING})

        await self.history.update(env.call_id, greet)
        if fresh:
            await self._publish(env, events.ReplyChunk(index=0, text=first_message, final=True, voice=agent.voice),
                                turn_id=GREETING, epoch=0, event_id=f"{env.call_id}-greeting-0")

    # ------------------------------------------------------------ a caller turn
    async def on_transcript(self, env: Envelope[Any], d: events.TranscriptFinalized) -> None:
        assert self.history is not None
        text = d.text.strip()
        turn_id = env.turn_id or subjects.new_id()
        if not text:
            return
        fresh = False

        def add(h: CallHistory) -> None:
            nonlocal fresh
            if turn_id in h.turns or h.ended or env.epoch < h.epoch:
                return  # redelivered transcript, ended call or a stale epoch: nothing to do
            fresh = True
            h.epoch = max(h.epoch, env.epoch)
            h.turns[turn_id] = TurnState(
                turn_id=turn_id, epoch=env.epoch, caller_text=text,
                caller_started_at=_iso(d.speech_end_wall_ms - (d.end_ms - d.start_ms)) if d.speech_end_wall_ms
                else None,
                caller_ended_at=_iso(d.speech_end_wall_ms) if d.speech_end_wall_ms else None,
                speech_end_wall_ms=d.speech_end_wall_ms, end_of_turn_ms=d.end_of_turn_ms, stt_ms=d.stt_ms,
            )
            h.messages.append({"role": "user", "content": text, "turn_id": turn_id})

        h = await self.history.update(env.call_id, add)
        if h is None:
            raise Transient("call history not created yet")  # CallStarted not processed yet
        if not fresh:
            return
        prev = self.active.get(env.call_id)
        if prev is not None:
            prev[2].cancel()  # a newer caller turn supersedes an unfinished reply
        agent = await self._agent(h)
        task = asyncio.create_task(self._reply(env, h, agent, turn_id))
        self.active[env.call_id] = (turn_id, env.epoch, task)
        try:
            await asyncio.wait({task})
        finally:
            if self.active.get(env.call_id, (None,))[0] == turn_id:
                self.active.pop(env.call_id, None)

    async def _reply(self, env: Envelope[Any], h: CallHistory, agent: AgentConfig, turn_id: str) -> None:
        assert self.history is not None
        epoch = env.epoch
        messages = [{"role": "system", "content": agent.system_prompt}] + [
            {"role": m["role"], "content": m["content"]} for m in h.messages[-self.settings.max_history_messages:]
        ]
        chunker = SentenceChunker()
        index = 0
        started = time.time() * 1000
        first_token: float | None = None
        hangup = False
        base_url = agent.llm.base_url or self.settings.llm_base_url
        model = agent.llm.model or self.settings.llm_model

        async def emit(text: str, final: bool) -> None:
            nonlocal index
            i = index
            index += 1
            now = time.time() * 1000

            def record(x: CallHistory) -> None:
                t = x.turns.get(turn_id)
                if t is None:
                    return
                t.chunks.append(text)
                t.reply_done = final
                t.hangup_after = t.hangup_after or (final and hangup)
                if i == 0:
                    t.llm_start_wall_ms = started
                    t.llm_first_token_ms = _ms(started, first_token)
                    t.llm_first_sentence_ms = _ms(started, now)
                    t.first_sentence_wall_ms = now
                    t.agent_started_at = _iso(now)

            await self.history.update(env.call_id, record)  # type: ignore[union-attr]
            await self._publish(env, events.ReplyChunk(index=i, text=text, final=final, voice=agent.voice,
                                                       speech_end_wall_ms=h.turns[turn_id].speech_end_wall_ms),
                                turn_id=turn_id, epoch=epoch, event_id=f"{env.call_id}-{turn_id}-{i}")
            if i == 0:
                metrics.STAGE_SECONDS.labels(self.name, "llm_first_sentence").observe((now - started) / 1000)

        with tracer.start_as_current_span("brain llm", attributes={
            "call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": turn_id, "agent_id": agent.id,
            "agent_version": agent.version, "llm.model": model,
        }) as span:
            try:
                async with asyncio.timeout(self.settings.llm_total_timeout_s):
                    stream = self.model.stream(base_url=base_url, model=model, messages=messages,
                                               temperature=agent.llm.temperature, max_tokens=agent.llm.max_tokens,
                                               tools=[END_CALL_TOOL])
                    it = stream.__aiter__()
                    while True:
                        timeout = self.settings.llm_first_token_timeout_s if first_token is None else None
                        try:
                            delta = await asyncio.wait_for(it.__anext__(), timeout)
                        except StopAsyncIteration:
                            break
                        if delta.text:
                            metrics.LLM_TOKENS.labels(self.name).inc()
                        if delta.text and first_token is None:
                            first_token = time.time() * 1000
                            span.add_event("first_token")
                            metrics.STAGE_SECONDS.labels(self.name, "llm_first_token").observe(
                                (first_token - started) / 1000)
                            metrics.LLM_TTFT.labels(self.name).observe((first_token - started) / 1000)
                        for name, _args in delta.tool_calls:
                            if name == "end_call":
                                hangup = True
                        for sentence in chunker.push(delta.text):
                            if index == 0:
                                span.add_event("first_sentence")
                            await emit(sentence, final=False)  # as soon as it is complete
                rest = chunker.flush()
                if not rest and index == 0:
                    rest = "Goodbye." if hangup else "Sorry, could you say that again?"
                # the final chunk may be empty: tts then sends one silent frame that closes the turn
                await emit(rest, final=True)
            except asyncio.CancelledError:
                span.add_event("cancelled")
                raise
            except Exception as e:
                metrics.ERRORS.labels(self.name, "llm").inc()
                log.warning("llm_failed", call_id=env.call_id, error=repr(e)[:200])
                span.record_exception(e)
                await emit(self.settings.apology, final=True)
        if hangup:
            await self._publish(env, events.HangUp(after_playout=True), turn_id=turn_id, epoch=epoch,
                                event_id=f"{env.call_id}-{turn_id}-hangup")

    # ------------------------------------------------------------ what the caller heard
    async def _update_turn(self, env: Envelope[Any], fn: Any) -> None:
        assert self.history is not None
        turn_id = env.turn_id
        if not turn_id:
            return

        def apply(h: CallHistory) -> None:
            t = h.turns.get(turn_id)
            if t is not None and not t.completed:
                fn(t)

        await self.history.update(env.call_id, apply)

    async def on_playout_finished(self, env: Envelope[Any], d: events.PlayoutFinished) -> None:
        assert self.history is not None
        turn_id = env.turn_id
        if not turn_id:
            return
        done: list[TurnState] = []

        def finish(h: CallHistory) -> None:
            done.clear()
            t = h.turns.get(turn_id)
            if t is None or t.completed:
                return
            t.heard_chunks = sorted(set(t.heard_chunks) | set(d.heard_chunks))
            if d.cleared or not t.reply_done:
                t.interrupted = True
            t.completed = True
            heard = h.heard_text(t)
            for m in h.messages:
                if m.get("turn_id") == turn_id and m["role"] == "assistant":
                    m["content"] = heard
                    break
            else:
                h.messages.append({"role": "assistant", "content": heard, "turn_id": turn_id})
            done.append(t.model_copy())

        h = await self.history.update(env.call_id, finish)
        if h is None or not done:
            return
        if d.cleared:
            active = self.active.get(env.call_id)
            if active is not None and active[0] == turn_id:
                active[2].cancel()
        await self._turn_completed(env, h, done[0])

    async def _turn_completed(self, env: Envelope[Any], h: CallHistory, t: TurnState) -> None:
        latency = events.LatencyBreakdown(
            end_of_turn_ms=t.end_of_turn_ms, stt_ms=t.stt_ms, llm_first_token_ms=t.llm_first_token_ms,
            llm_first_sentence_ms=t.llm_first_sentence_ms,
            bus_and_playout_ms=_ms(t.first_sentence_wall_ms, t.first_audio_wall_ms),
            voice_to_voice_ms=_ms(t.speech_end_wall_ms, t.first_audio_wall_ms),
        )
        if latency.voice_to_voice_ms is not None:
            metrics.STAGE_SECONDS.labels(self.name, "voice_to_voice").observe(latency.voice_to_voice_ms / 1000)
        await self._publish(env, events.TurnCompleted(
            caller_text=t.caller_text, caller_started_at=t.caller_started_at, caller_ended_at=t.caller_ended_at,
            agent_text=h.heard_text(t), agent_started_at=t.agent_started_at or _iso(t.first_audio_wall_ms),
            agent_ended_at=_iso(), interrupted=t.interrupted, latency=latency,
        ), turn_id=t.turn_id, epoch=t.epoch, event_id=f"{env.call_id}-{t.turn_id}-completed")

    # ------------------------------------------------------------ barge-in, notes, end
    async def _on_barge_in(self, msg: Msg) -> None:
        try:
            env = parse(msg.data)
        except Exception:
            return
        active = self.active.get(env.call_id)
        if active is not None and active[1] < env.epoch:
            active[2].cancel()

    async def _note(self, env: Envelope[Any], text: str) -> None:
        assert self.history is not None
        await self.history.update(env.call_id, lambda h: h.messages.append({"role": "system", "content": text}))

    async def on_call_ended(self, env: Envelope[Any]) -> None:
        assert self.history is not None
        active = self.active.pop(env.call_id, None)
        if active is not None:
            active[2].cancel()
        unfinished: list[TurnState] = []

        def end(h: CallHistory) -> None:
            h.ended = True
            unfinished.clear()
            for t in h.turns.values():
                if not t.completed and t.chunks:
                    t.completed = True
                    t.interrupted = t.interrupted or not t.reply_done or len(set(t.heard_chunks)) < len(t.chunks)
                    if t.interrupted:
                        t.heard_chunks = sorted(set(t.heard_chunks))
                    unfinished.append(t.model_copy())

        h = await self.history.update(env.call_id, end)
        if h is None:
            return
        for t in unfinished:
            with contextlib.suppress(Exception):
                await self._turn_completed(env, h, t)
        await self.history.delete(env.call_id)  # the record now lives in PostgreSQL
