"""The brain service: wiring only. Each handler loads the call's history, applies one conversation operation
(``conversation.py``), and publishes what follows; a caller turn streams its reply through ``reply.py`` with
the agent's chat model (``chat/``) at the endpoint ``endpoints.py`` picks for it."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Later, NotMine, Transient
from voice_runtime.handlers import Handlers, delivery
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.service import Service
from voice_schemas import AgentConfig, Envelope, events, make, subjects
from voice_schemas.agent import DTMF_MAX_DIGITS, HoldTool, HttpTool, SendDtmfTool, ToolSpec, TransferCallTool
from voice_schemas.streams import BRAIN_APPROVALS, BRAIN_TURNS, KV_HISTORY, KV_SECRETS

from .chat import (
    ChatLimits,
    ChatModel,
    ChatModelError,
    ChatModelProvider,
    ChatRequest,
    Delta,
    Endpoint,
    ToolCall,
    load_provider,
)
from .conversation import (
    GREETING,
    PENDING_APPROVAL,
    CallHistory,
    HeldToolCall,
    HistoryLimits,
    ReplyTimings,
    SentChunk,
    TurnState,
    turn_completed,
)
from .early import EARLY, EarlyCompletion, EarlyReplies, log_failure
from .endpoints import AgentEndpoints, refusal_reason
from .history import HistoryStore
from .intents import IntentClassifier, for_turn
from .knowledge import Knowledge
from .mcp_tools import McpTool, McpTools, model_functions
from .prompting import system_prompt
from .reply import ReplySuperseded, Say, stream_reply
from .settings import BrainSettings
from .tools import (
    HttpTools,
    ToolFailed,
    ToolOutcome,
    check_arguments,
    model_tools,
    timed,
    tool_parameters,
    transfer_target,
)

log = get_logger(__name__)
tracer = trace.get_tracer("voice.brain")
# CallAnswered waits this long, asking every HISTORY_POLL_S, for the history CallStarted writes (``_history_soon``)
HISTORY_WAIT_S = 1.0
HISTORY_POLL_S = 0.01
EARLY_QUEUE = "brain-early"  # the queue group in which one replica begins each likely-final turn's reply
WARMUPS = Counter("voice_brain_prompt_warmups_total", "Calls' prompts evaluated by their LLM server at the answer, "
                  "before the first turn (PROMPT_WARMUP), by outcome (done, failed)", ["outcome"])


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


@dataclass
class _Meter:
    """The model's tokens over a reply's completions: as reported, or estimated (4 characters a token) for a
    completion whose endpoint reported none."""

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False

    async def count(self, deltas: AsyncIterator[Delta], prompt_chars: int) -> AsyncIterator[Delta]:
        reported = False
        text_chars = 0
        try:
            async for d in deltas:
                if d.usage is not None:
                    reported = True
                    self.input_tokens += d.usage.input_tokens
                    self.output_tokens += d.usage.output_tokens
                text_chars += len(d.text)
                yield d
        finally:
            if not reported:
                self.estimated = True
                self.input_tokens += math.ceil(prompt_chars / 4)
                self.output_tokens += math.ceil(text_chars / 4)
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()


@dataclass
class _ReplyRun:
    """What one reply carries across its tool rounds."""

    env: Envelope[Any]
    agent: AgentConfig
    turn_id: str
    complete: Callable[[list[dict[str, Any]]], AsyncIterator[Delta]]  # prompt messages -> a metered completion
    meter: _Meter = field(default_factory=_Meter)
    transfer_to: str | None = None  # set by transfer_call: carried out once the reply has played
    text_only: bool = False  # a text chat: no keypad, no hold
    dtmf: str = ""  # keys send_dtmf pressed in this reply: sent once it has played
    hold: tuple[float, str] | None = None  # (seconds, audio) set by hold: the hold starts once the reply has played
    mcp: dict[str, McpTool] = field(default_factory=dict)  # the MCP tools offered in this reply, by function name
    early: EarlyCompletion | None = None  # the first completion was begun on the likely-final transcript
    transcript_wall_ms: float = 0.0  # when the final transcript reached this replica


def _put_on_hold(h: CallHistory) -> None:
    h.on_hold = True


def _off_hold(h: CallHistory) -> None:
    h.on_hold = False


def _prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages)


def _prompt(h: CallHistory, agent: AgentConfig, intent: Any, knowledge: str | None) -> list[dict[str, Any]]:
    """The first completion's messages for the history's current turn: the intent's hint and the retrieved
    knowledge go right before the caller's words (``CallHistory.prompt``)."""
    if intent is not None:
        knowledge = "\n\n".join(x for x in (intent.hint, knowledge) if x) or None
    return h.prompt(system_prompt(agent, h.text_only), knowledge)


def _tools(agent: AgentConfig, offered: dict[str, McpTool]) -> tuple[dict[str, Any], ...]:
    """The function schemas of every completion of ``agent``: its own tools, then its MCP servers' ``offered``."""
    return model_tools(agent) + model_functions(offered)


def _request(agent: AgentConfig, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> ChatRequest:
    return ChatRequest(messages=messages, temperature=agent.llm.temperature, max_tokens=agent.llm.max_tokens,
                       tools=tools)


def _with_head_start(chunk: SentChunk, run: _ReplyRun) -> SentChunk:
    """A reply begun early: its timings count from the model's real start, and say by how much it led the final
    transcript (``early_start_ms``)."""
    early, x = run.early, chunk.timings
    if early is None or x is None:
        return chunk
    start = early.started_wall_ms
    first = early.first_text_wall_ms
    return dataclasses.replace(chunk, timings=ReplyTimings(
        llm_start_wall_ms=start, llm_first_token_ms=None if first is None else round(first - start, 1),
        llm_first_sentence_ms=round(x.first_sentence_wall_ms - start, 1),
        first_sentence_wall_ms=x.first_sentence_wall_ms,
        early_start_ms=round(max(run.transcript_wall_ms - start, 0.0), 1)))


class BrainService(Service):
    name = "brain"
    turns = Handlers(BRAIN_TURNS)
    approvals = Handlers(BRAIN_APPROVALS)

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
        self.http_tools: HttpTools | None = None
        self.mcp: McpTools | None = None  # agents' MCP servers
        self._egress = settings.egress_policy()
        self._box = settings.secret_box()
        self.knowledge = Knowledge(settings)  # retrieval from the agents' knowledge bases (off without DATABASE_URL)
        self.intents = IntentClassifier(settings.intents_model, cache_agents=settings.intents_cache_agents)
        self.early = (EarlyReplies(max_calls=settings.early_reply_max_calls, ttl_s=settings.early_reply_ttl_s,
                                   spawn=self.spawn) if settings.early_replies else None)

    async def on_start(self) -> None:
        s = self.settings
        self.history = HistoryStore(self.kv[KV_HISTORY.bucket], HistoryLimits(
            window_messages=s.max_history_messages, window_chars=s.max_history_chars,
            window_turns=s.max_history_turns, trim_to=s.history_trim_to))
        self.directory = AgentDirectory(self.kv["agents"], self.kv["numbers"], s)
        self.endpoints = AgentEndpoints(platform=Endpoint(s.llm_base_url, s.llm_api_key.get_secret_value()),
                                        egress=self._egress, box=self._box, secrets=self.kv[KV_SECRETS.bucket],
                                        replicas=s.platform_urls()[1:])
        self.http_tools = HttpTools(self._egress, self.endpoints.tenant_key)
        self.mcp = McpTools(self._egress, self.endpoints.tenant_key, wait_s=s.mcp_list_wait_s,
                            cache_entries=s.mcp_cache_entries)
        await self.knowledge.start()
        await self.intents.start()  # loads the model in the background; the first classification waits for it
        # every replica hears barge-ins: whichever streams the call's reply cancels it
        await self.on_events(events.BargeIn.subject_pattern(), self._on_barge_in)
        if self.early is not None:  # one replica begins each likely-final turn's reply early
            await self.on_events(events.TranscriptPartial.subject_pattern(), self._on_likely_final,
                                 queue=EARLY_QUEUE)

    async def on_stop(self) -> None:
        for active in list(self.active.values()):
            active.task.cancel()
        if self.early is not None:
            self.early.stop()

    async def stop(self) -> None:
        await super().stop()
        await self.chat.aclose()
        if self.http_tools is not None:
            await self.http_tools.aclose()
        if self.mcp is not None:
            await self.mcp.aclose()
        await self.knowledge.aclose()
        await self.intents.aclose()

    # ------------------------------------------------------------ helpers
    async def _agent(self, h: CallHistory) -> AgentConfig:
        assert self.directory is not None
        agent = await self.directory.version(h.agent_id, h.agent_version)
        if agent is None:
            raise Transient(f"agent {h.agent_id} v{h.agent_version} not in KV yet")
        return agent

    async def _offered(self, agent: AgentConfig) -> dict[str, McpTool]:
        """The tools the agent's MCP servers offer (listed when a call starts, cached per agent version)."""
        return await self.mcp.tools_for(agent) if self.mcp is not None else {}

    def _chat_model(self, endpoint: Endpoint, agent: AgentConfig) -> ChatModel:
        return self.chat.model(endpoint, agent.llm.model or self.settings.llm_model)

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
        agent = await self._agent(h)  # fail early (and retry) while the agent is not in KV yet
        if self.mcp is not None:
            self.mcp.prefetch(agent)  # its MCP servers listed before the caller's first turn
        await self.history.create(h)  # False on redelivery: history already there

    @turns.on(events.CallAnswered)
    async def on_call_answered(self, env: Envelope[events.CallAnswered]) -> None:
        """The caller's media is up: greet with the agent's first message (unless the call says not to: an outbound
        call whose agent lets the callee speak first), and have the LLM server evaluate the call's prompt so far
        while the greeting plays (``_warm_prompt``)."""
        assert self.history is not None
        h = await self._history_soon(env.call_id)
        if h is None:
            if not env.data.greet:
                return  # nothing to say: the prompt is evaluated by the first turn
            raise Transient("call history not created yet")
        agent = await self._agent(h)
        # the recording notice (when the agent records with one), then first_message
        text = agent.greeting() if env.data.greet else ""
        if text:
            now = _now_ms()
            applied = await self.history.update(env.call_id, lambda x: x.greet(text, now))
            if applied is not None and applied[1]:
                await self._publish(env, events.ReplyChunk(index=0, text=text, final=True, voice=agent.voice,
                                                           text_only=h.text_only),
                                    turn_id=GREETING, epoch=0, event_id=f"{env.call_id}-greeting-0")
            h = applied[0] if applied is not None else h
        self._warm_prompt(env, h, agent)
        if text and h.text_only:  # also on a redelivery: the greeting may have been sent but not yet completed
            await self._text_delivered(env, GREETING)

    def _warm_prompt(self, env: Envelope[Any], h: CallHistory, agent: AgentConfig) -> None:
        """With ``PROMPT_WARMUP``, one background completion of a single token on the call's own server of the
        platform's model, with what every turn's prompt of the call begins with (the system prompt, the tools, the
        greeting): the server (llama.cpp reuses the longest prefix it evaluated last) then evaluates only the
        caller's words at the first turn. Without it the first turn evaluates the whole prompt whenever the server
        last served another agent or another kind of call (measured: 1.2 s of the first turn's 1.24 s p95 first
        token on a 2-core AVX2 machine). An agent with its own endpoint is never sent one."""
        if not self.settings.prompt_warmup or agent.llm.base_url or h.ended:
            return
        self.spawn(self._warm(env, h, agent), name=f"brain-warm:{env.call_id}")

    async def _warm(self, env: Envelope[Any], h: CallHistory, agent: AgentConfig) -> None:
        assert self.endpoints is not None
        messages = h.prompt(system_prompt(agent, h.text_only))
        request = _request(agent, messages, _tools(agent, await self._offered(agent)))  # what the first turn offers
        endpoint = await self.endpoints.for_agent(env.tenant_id, agent.llm, env.call_id)  # the call's server
        model = self._chat_model(endpoint, agent)
        started = time.perf_counter()
        try:
            await model.warm(request)
        except ChatModelError as e:
            WARMUPS.labels("failed").inc()
            log.warning("llm_prompt_warmup_failed", call_id=env.call_id, error=safe_error(e))
            return
        WARMUPS.labels("done").inc()
        log.info("llm_prompt_warmed", call_id=env.call_id, warmup_ms=round((time.perf_counter() - started) * 1000),
                 prompt_chars=_prompt_chars(messages))

    async def _history_soon(self, call_id: str) -> CallHistory | None:
        """The call's history, waiting up to ``HISTORY_WAIT_S`` for it. The caller's media comes up tens of ms
        after the call starts, so ``CallAnswered`` can overtake the handling of ``CallStarted`` (the agent looked
        up, the history written); a nak would greet the caller a backoff later (0.2 s and more: the greetings
        of 500-1,000 ms of the 2026-12-02 benches), so it waits here first."""
        assert self.history is not None
        for _ in range(round(HISTORY_WAIT_S / HISTORY_POLL_S)):  # polled: another replica may write it (KV)
            h = await self.history.get(call_id)
            if h is not None:
                return h
            await asyncio.sleep(HISTORY_POLL_S)
        return await self.history.get(call_id)

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
        if fresh:
            await self._start_reply(env, h, turn_id)
        elif delivery.get() > 1:
            await self._take_over(env, turn_id)
        elif h.needs_reply(turn_id) and not self._replying(env.call_id, turn_id):
            # a first delivery of a turn another replica has begun: this copy was handed to this replica while it
            # stalled, then to the other one. Acking it would settle the message even if the other died mid-reply;
            # left alone, it comes back after the ack wait unless the other replica finishes the turn
            raise NotMine()
        # otherwise: a duplicate transcript, an ended call or a stale epoch

    async def _on_likely_final(self, env: Envelope[events.TranscriptPartial]) -> None:
        """Begin the reply's completion on the turn's likely-final words (``early.py``): the very request the reply
        will make if the final transcript says the same. Nothing is published or stored here."""
        u = env.data
        text, turn_id = u.text.strip(), env.turn_id
        if not u.likely_final or not text or not turn_id or self.early is None or self.history is None:
            return
        if env.call_id in self.active:  # a reply streams here: the caller talks over it (its end changes the window)
            EARLY.labels("skipped_replying").inc()
            return
        try:
            h = await self.history.get(env.call_id)
            if h is None or h.text_only or h.knows_turn(turn_id) or h.ended or env.epoch < h.epoch:
                EARLY.labels("skipped_turn").inc()
                return
            agent = await self._agent(h)
            assert self.endpoints is not None
            endpoint = await self.endpoints.for_agent(env.tenant_id, agent.llm, env.call_id)
            offered = await self._offered(agent)
            intent = await for_turn(self.intents, agent, text, env.call_id)
            if intent is not None and intent.completion is not None:  # answered without the model
                EARLY.labels("skipped_intent").inc()
                return
            found = await self.knowledge.for_turn(h.tenant_id, agent, text)
            h.add_caller_turn(turn_id, env.epoch, events.TranscriptFinalized(utterance_id=turn_id, text=text))
            h.compact(self.history.limits)
        except Exception as e:  # best effort: the reply will ask the model itself
            log_failure(env.call_id, e)
            return
        if env.call_id in self.active:  # the final overtook us meanwhile
            return
        model = self._chat_model(endpoint, agent)
        request = _request(agent, _prompt(h, agent, intent, found.text if found is not None else None),
                           _tools(agent, offered))
        self.early.begin(env.call_id, turn_id, (endpoint.base_url, model.model), request,
                         partial(model.stream, request))

    def _replying(self, call_id: str, turn_id: str) -> bool:
        active = self.active.get(call_id)
        return active is not None and active.turn_id == turn_id

    async def _take_over(self, env: Envelope[Any], turn_id: str) -> None:
        """The transcript came back (its ack wait passed without the heartbeats of the replica that had it): that
        replica died mid-reply, unless it is this one. A reply not begun is made now (the turn is late); one cut
        off after some sentences is closed where it stopped (the caller heard those), so no turn is answered
        twice. The turn's new attempt makes the old replica's chunks refused, were it alive after all."""
        assert self.history is not None
        active = self.active.get(env.call_id)
        if active is not None and active.turn_id == turn_id:
            return  # still streaming here: the heartbeats were late, nobody died
        applied = await self.history.update(env.call_id, lambda h: h.take_over(turn_id))
        if applied is None or applied[1] is None:
            return
        h, (attempt, sent) = applied[0], applied[1]
        metrics.TAKEOVERS.labels(self.name, "reply" if sent == 0 else "closed").inc()
        log.info("reply_taken_over", call_id=env.call_id, turn_id=turn_id, attempt=attempt, chunks_sent=sent)
        if sent == 0:
            await self._start_reply(env, h, turn_id, attempt)
            return
        await self.history.update(env.call_id, lambda x: x.close_superseded(turn_id, sent))
        agent = await self._agent(h)
        await self._publish(env, events.ReplyChunk(index=sent, text="", final=True, voice=agent.voice,
                                                   text_only=h.text_only),
                            turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{turn_id}-{sent}-a{attempt}")
        if h.text_only:
            await self._text_delivered(env, turn_id)

    async def _start_reply(self, env: Envelope[Any], h: CallHistory, turn_id: str, attempt: int = 0) -> None:
        """Stream the reply of ``turn_id`` (just made the call's current turn) and wait for it: the event that
        caused it is acked once the reply is out (or cancelled)."""
        # a newer turn supersedes an unfinished reply: here at once; on another replica at its next chunk
        # (the history now names this turn as the call's latest)
        previous = self.active.get(env.call_id)
        if previous is not None:
            previous.superseded.set()
        agent = await self._agent(h)
        superseded = asyncio.Event()
        task = asyncio.create_task(self._reply(env, h, agent, turn_id, superseded, attempt))
        self.active[env.call_id] = _ActiveReply(turn_id, env.epoch, task, superseded)
        try:
            await asyncio.wait({task})  # the transcript is acked once its reply is out (or cancelled)
        finally:
            active = self.active.get(env.call_id)
            if active is not None and active.turn_id == turn_id:
                self.active.pop(env.call_id, None)

    async def _reply(self, env: Envelope[Any], h: CallHistory, agent: AgentConfig, turn_id: str,
                     superseded: asyncio.Event, attempt: int = 0) -> None:
        history, endpoints = self.history, self.endpoints
        assert history is not None and endpoints is not None
        transcript_wall_ms = _now_ms()
        offered = await self._offered(agent)
        tools = _tools(agent, offered)
        speech_end_wall_ms = h.turns[turn_id].speech_end_wall_ms
        with tracer.start_as_current_span("brain llm", attributes={
            "call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": turn_id, "agent_id": agent.id,
            "agent_version": agent.version,
        }) as span:
            try:
                endpoint = await endpoints.for_agent(env.tenant_id, agent.llm, env.call_id)
            except Exception as e:  # EndpointRefused (no key to be had): the apology, like any model failure
                metrics.ERRORS.labels(self.name, "llm_endpoint_refused").inc()
                refused: Exception | None = e
            else:
                refused = None
                model = self._chat_model(endpoint, agent)

            def complete(messages: list[dict[str, Any]]) -> AsyncIterator[Delta]:
                if refused is not None:
                    return _failing(refused)
                request = _request(agent, messages, tools)
                early = self.early.take(env.call_id, turn_id, (endpoint.base_url, model.model), request) if (
                    self.early is not None and run.early is None) else None
                if early is not None:  # begun on the likely-final transcript: its head start is kept
                    run.early = early
                    span.add_event("early_start", timestamp=int(early.started_wall_ms * 1e6))

                    def first_token(wall_ms: float) -> None:
                        span.add_event("first_token", timestamp=int(wall_ms * 1e6))

                    return run.meter.count(early.replay(first_token), _prompt_chars(messages))
                return run.meter.count(model.stream(request), _prompt_chars(messages))

            run = _ReplyRun(env, agent, turn_id, complete, mcp=offered, text_only=h.text_only,
                            transcript_wall_ms=transcript_wall_ms)
            chunk_id = f"{env.call_id}-{turn_id}-"
            again = f"-a{attempt}" if attempt else ""  # a taken-over reply: never deduplicated against the old one

            async def emit(chunk: SentChunk) -> None:
                if chunk.superseded:
                    await history.update(env.call_id, lambda x: x.close_superseded(turn_id, chunk.index))
                else:
                    sent = _with_head_start(chunk, run)

                    def record(x: CallHistory) -> bool:
                        if chunk.final:  # every completion of the reply is done: its usage goes with the turn
                            m = run.meter
                            x.add_usage(turn_id, m.input_tokens, m.output_tokens, m.estimated)
                        return x.record_chunk(turn_id, sent, attempt)

                    applied = await history.update(env.call_id, record)
                    if applied is None or not applied[1]:
                        raise ReplySuperseded  # a newer caller turn (any replica's) or the call ended
                await self._publish(env, events.ReplyChunk(index=chunk.index, text=chunk.text, final=chunk.final,
                                                           voice=agent.voice, speech_end_wall_ms=speech_end_wall_ms,
                                                           hangup_after=chunk.final and chunk.hang_up,
                                                           text_only=h.text_only),
                                    turn_id=turn_id, epoch=env.epoch, event_id=chunk_id + str(chunk.index) + again)
                if h.text_only and chunk.final:  # no playout: the reply is complete once its text is out
                    await self._text_delivered(env, turn_id)
                if chunk.timings is not None:
                    span.add_event("first_sentence")
                    metrics.STAGE_SECONDS.labels(self.name, "llm_first_sentence").observe(
                        (chunk.timings.first_sentence_wall_ms - chunk.timings.llm_start_wall_ms) / 1000)
                    if run.early is not None:
                        span.set_attribute("voice.early_start_ms", round(run.transcript_wall_ms
                                                                         - run.early.started_wall_ms))

            async def run_tools(calls: tuple[ToolCall, ...], say: Say) -> AsyncIterator[Delta] | None:
                return await self._run_tools(run, calls, say)

            # a confident intent: a cached answer (no LLM request) or its tool's call starts the reply, else a hint
            intent = await for_turn(self.intents, agent, h.turns[turn_id].caller_text, env.call_id)
            cached = intent is not None and intent.intent.cached
            knowledge = None if cached else await self.knowledge.attach(history, h, agent, turn_id)
            if intent is not None:
                await history.update(env.call_id, lambda x: x.note_intent(turn_id, intent.intent, intent.hint))
            first = intent.completion if intent is not None else None
            prompt = _prompt(h, agent, intent, knowledge) if first is None else []
            try:
                outcome = await stream_reply(first or complete(prompt), emit, apology=self.settings.apology,
                                             stop=superseded, tools=run_tools,
                                             max_sentences=agent.llm.max_sentences,
                                             first_clause_chars=0 if h.text_only else agent.llm.first_clause_chars)
            except asyncio.CancelledError:
                span.add_event("cancelled")
                raise
            if self.early is not None:
                self.early.drop(env.call_id, "unused", turn_id)  # an intent's answer needed no completion
            if outcome.superseded:
                span.add_event("superseded")
                log.info("reply_superseded", call_id=env.call_id, turn_id=turn_id, chunks=outcome.chunks)
            if outcome.error is not None:
                log.warning("reply_failed", call_id=env.call_id, turn_id=turn_id, agent_id=agent.id,
                            error_type=type(outcome.error).__name__, reason=refusal_reason(outcome.error))
                span.record_exception(outcome.error)
        await self._after_reply(env, run, turn_id, outcome.superseded,
                                final=outcome.hang_up or run.transfer_to is not None)
        if outcome.hang_up:
            await self._publish(env, events.HangUp(after_playout=True), turn_id=turn_id, epoch=env.epoch,
                                event_id=f"{env.call_id}-{turn_id}-hangup")
        elif run.transfer_to is not None and not outcome.superseded:
            await self._publish(env, events.Transfer(target=run.transfer_to, after_playout=True, requested_by="agent"),
                                turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{turn_id}-transfer")

    async def _after_reply(self, env: Envelope[Any], run: _ReplyRun, turn_id: str, superseded: bool,
                           final: bool) -> None:
        """What the reply's tools asked to happen once it has played (before a hang-up or transfer, which ingress
        runs after them): the keys of ``send_dtmf``, then the hold of ``hold`` (not when the call ends or moves)."""
        assert self.history is not None
        if superseded:
            return
        if run.dtmf:
            await self._publish(env, events.SendDtmf(digits=run.dtmf, after_playout=True, requested_by="agent"),
                                turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{turn_id}-dtmf")
        if run.hold is not None and not final:
            seconds, audio = run.hold
            await self._publish(env, events.Hold(max_s=seconds, audio="silence" if audio == "silence" else "tone"),
                                turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{turn_id}-hold")
            await self.history.update(env.call_id, _put_on_hold)

    # ------------------------------------------------------------ tools
    async def _run_tools(self, run: _ReplyRun, calls: tuple[ToolCall, ...], say: Say) -> AsyncIterator[Delta] | None:
        """One round of the model's tool calls: each announced (``tool.call``), checked, then run, or held for a
        supervisor; the round and its results stored in the call's history; the next completion (the model reads
        the results), or None once a call is held (the reply ends with the tool's holding line)."""
        assert self.history is not None
        env, agent, turn_id = run.env, run.agent, run.turn_id
        named = [(f"tc-{subjects.new_id()}", c) for c in calls]
        results: dict[str, str] = {}
        held: list[tuple[HeldToolCall, ToolSpec | McpTool]] = []
        for tool_call_id, c in named:
            await self._publish(env, events.ToolCallRequested(tool_call_id=tool_call_id, name=c.name,
                                                              arguments=dict(c.arguments)),
                                turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{tool_call_id}-call")
            spec: ToolSpec | McpTool | None = agent.tool(c.name) or run.mcp.get(c.name)
            if spec is not None and spec.requires_approval and not c.malformed:
                try:
                    self._check(spec, c.arguments)  # a call with bad arguments is not worth a supervisor's time
                except ToolFailed as e:
                    outcome = ToolOutcome(False, error=str(e))
                else:
                    now = _now_ms()
                    held.append((HeldToolCall(tool_call_id=tool_call_id, name=c.name, arguments=dict(c.arguments),
                                              turn_id=turn_id, requested_ms=now,
                                              deadline_ms=now + spec.approval_timeout_s * 1000), spec))
                    results[tool_call_id] = PENDING_APPROVAL
                    continue
            else:
                outcome = await self._execute(env.tenant_id, run, spec, c, say)
            await self._tool_result(env, turn_id, tool_call_id, c.name, outcome)
            results[tool_call_id] = outcome.for_model()

        def record(x: CallHistory) -> None:
            x.record_tool_round(turn_id, [(i, c.name, dict(c.arguments)) for i, c in named], results)
            for h, _ in held:
                x.hold_tool(h)

        stored = await self.history.update(env.call_id, record)
        if stored is None:
            return None  # the call has ended
        for h, spec in held:
            await self._publish(env, events.ToolApprovalRequested(
                tool_call_id=h.tool_call_id, name=h.name, arguments=h.arguments, timeout_s=spec.approval_timeout_s,
            ), turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{h.tool_call_id}-approval")
        if held:
            await say(held[0][1].approval_line)
            return None
        return run.complete(stored[0].prompt(system_prompt(agent, stored[0].text_only)))

    @staticmethod
    def _check(spec: ToolSpec | McpTool, arguments: Any) -> None:
        check_arguments(spec.parameters if isinstance(spec, McpTool) else tool_parameters(spec), arguments)

    async def _execute(self, tenant_id: str, run: _ReplyRun | None, spec: ToolSpec | McpTool | None, call: ToolCall,
                       say: Say | None) -> ToolOutcome:
        """Run one tool call (``run``/``say`` are None for a call approved after its reply ended)."""
        if spec is None:
            return ToolOutcome(False, error=f"there is no tool named {call.name!r}")
        if call.malformed:
            return ToolOutcome(False, error="the arguments were not a JSON object")
        try:
            self._check(spec, call.arguments)
        except ToolFailed as e:
            return ToolOutcome(False, error=str(e))
        if isinstance(spec, TransferCallTool):
            target = transfer_target(spec, call.arguments)
            if run is None:
                return ToolOutcome(False, error="a transfer is only made during the agent's reply")
            run.transfer_to = target
            return ToolOutcome(True, result={"status": "the caller will be transferred once you have finished "
                                             "speaking; say a short goodbye"})
        if isinstance(spec, SendDtmfTool | HoldTool):
            return await self._keys_or_hold(run, spec, call, say)
        if isinstance(spec, McpTool):
            assert self.mcp is not None
            task = asyncio.ensure_future(timed(partial(self.mcp.call, tenant_id, spec, call.arguments)))
        elif isinstance(spec, HttpTool):
            assert self.http_tools is not None
            task = asyncio.ensure_future(timed(partial(self.http_tools.call, tenant_id, spec, call.arguments)))
        else:
            return ToolOutcome(False, error=f"the tool {call.name!r} cannot be run here")
        try:
            if say is not None and spec.filler:
                done, _ = await asyncio.wait({task}, timeout=spec.filler_after_ms / 1000)
                if not done:
                    await say(spec.filler)  # a slow lookup does not leave dead air
            return await task
        except Exception as e:
            if isinstance(e, ReplySuperseded):
                raise
            log.warning("tool_failed", tool=spec.name, error=safe_error(e, 200))
            return ToolOutcome(False, error="the tool failed unexpectedly")
        finally:
            if not task.done():
                task.cancel()

    @staticmethod
    async def _keys_or_hold(run: _ReplyRun | None, spec: SendDtmfTool | HoldTool, call: ToolCall,
                            say: Say | None) -> ToolOutcome:
        """``send_dtmf`` and ``hold`` (arguments checked): carried out by ingress once the reply has played."""
        if run is None:
            return ToolOutcome(False, error=f"{spec.name} only works during your reply")
        if run.text_only:
            return ToolOutcome(False, error="this is a text chat: there is no phone line to "
                               + ("press keys on" if isinstance(spec, SendDtmfTool) else "put on hold"))
        if isinstance(spec, SendDtmfTool):
            digits = str(call.arguments["digits"])
            if len(run.dtmf) + len(digits) > DTMF_MAX_DIGITS:
                return ToolOutcome(False, error=f"at most {DTMF_MAX_DIGITS} keys per reply")
            run.dtmf += digits
            return ToolOutcome(True, result={
                "status": f"the {len(digits)} key(s) will be pressed once you have finished speaking; you are told "
                          "when they were sent. Say nothing more unless you need to."})
        seconds = min(int(call.arguments.get("seconds") or spec.max_hold_s), spec.max_hold_s)
        if say is not None:
            await say(spec.line)
        run.hold = (float(seconds), spec.audio)
        heard = "a soft hold tone" if spec.audio == "tone" else "silence"
        return ToolOutcome(True, result={
            "status": f"the caller was told: {spec.line!r}. Once you have finished speaking they hear {heard} for "
                      f"up to {seconds} s, until you speak again. Say nothing more now."})

    async def _tool_result(self, env: Envelope[Any], turn_id: str | None, tool_call_id: str, name: str,
                           outcome: ToolOutcome) -> None:
        metrics.TOOL_CALLS.labels(self.name, "ok" if outcome.ok else "error").inc()
        await self._publish(env, events.ToolResultReturned(
            tool_call_id=tool_call_id, name=name, ok=outcome.ok, result=outcome.result if outcome.ok else None,
            error=outcome.error, duration_ms=outcome.duration_ms,
        ), turn_id=turn_id, epoch=env.epoch, event_id=f"{env.call_id}-{tool_call_id}-result")

    # ------------------------------------------------------------ what the caller heard
    @turns.on(events.PlayoutStarted)
    async def on_playout_started(self, env: Envelope[events.PlayoutStarted]) -> None:
        assert self.history is not None
        if env.turn_id:
            await self.history.update(env.call_id,
                                      lambda h: h.note_first_audio(env.turn_id, env.data.first_audio_wall_ms,
                                                                   env.data.tts_first_audio_ms))

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
        elif applied[1] and applied[0].on_hold:  # a supervisor's word takes the caller off hold: the agent speaks
            await self._agent_turn(env, f"whisper-{env.id}")

    @turns.on(events.DtmfReceived)
    async def on_dtmf(self, env: Envelope[events.DtmfReceived]) -> None:
        await self._note(env, f"The caller pressed the key {env.data.digit}.")

    @turns.on(events.ToolApprovalDecided)
    async def on_tool_approval(self, env: Envelope[events.ToolApprovalDecided]) -> None:
        """A supervisor's (or the timeout's) decision on a held tool call. The first decision wins (stored with
        compare-and-set, so a second one, or the same redelivered, changes nothing); approved: the tool runs here,
        once, whichever replica asked for it; either way its result replaces the pending one in the history and,
        when no other turn is open, the agent tells the caller in a turn of its own."""
        assert self.history is not None
        d = env.data
        applied = await self.history.update(env.call_id,
                                            lambda h: h.decide_tool(d.tool_call_id, d.approved, d.decided_by))
        if applied is None:
            return  # the call has ended
        h, held = applied
        if held is None:
            return  # decided before (a late or repeated decision), or never held
        agent = await self._agent(h)
        call = ToolCall(held.name, held.arguments)
        if held.state == "approved":
            spec = agent.tool(held.name) or (await self.mcp.tools_for(agent) if self.mcp else {}).get(held.name)
            outcome = await self._execute(env.tenant_id, None, spec, call, None)
            note = f"A supervisor approved the call of {held.name} ({held.tool_call_id}); it has run."
        else:
            why = "no supervisor decided in time" if d.decided_by == "timeout" else "a supervisor denied it"
            outcome = ToolOutcome(False, error=f"not run: {why}")
            note = f"The call of {held.name} ({held.tool_call_id}) was not run: {why}."
        if d.comment:
            note += f" The supervisor's comment: {d.comment}"
        await self._tool_result(env, held.turn_id, held.tool_call_id, held.name, outcome)
        told = note + " Tell the caller."
        await self.history.update(env.call_id, lambda x: x.tool_result(held.tool_call_id, outcome.for_model(), told))
        await self._agent_turn(env, f"tool-{held.tool_call_id}")

    @approvals.on(events.ToolApprovalRequested)
    async def on_approval_due(self, env: Envelope[events.ToolApprovalRequested]) -> None:
        """The durable timeout of a held tool call: the request comes back (``Later``) when it is due, to
        whichever replica is alive then, and is denied if nobody has decided."""
        assert self.history is not None
        h = await self.history.get(env.call_id)
        held = h.held(env.data.tool_call_id) if h is not None else None
        if held is None or held.state != "pending":
            return  # the call has ended, or a decision came
        remaining_ms = held.deadline_ms - _now_ms()
        if remaining_ms > 0:
            raise Later(remaining_ms / 1000)
        await self._publish(env, events.ToolApprovalDecided(tool_call_id=held.tool_call_id, approved=False,
                                                            decided_by="timeout", comment=None),
                            turn_id=held.turn_id, epoch=env.epoch,
                            event_id=f"{env.call_id}-{held.tool_call_id}-timeout")

    @turns.on(events.DtmfSent)
    async def on_dtmf_sent(self, env: Envelope[events.DtmfSent]) -> None:
        """Ingress pressed the keys (the model is told), or could not (told, and it says so in a turn of its own)."""
        d = env.data
        if d.ok:
            await self._note(env, f"The {d.keys} key(s) you asked for were pressed (DTMF sent).")
            return
        await self._note(env, f"The keys could not be pressed ({d.reason or 'unknown reason'}). Tell the caller "
                              "if it matters, or try another way.")
        if d.requested_by == "agent":
            await self._agent_turn(env, f"dtmf-failed-{env.id}")

    @turns.on(events.HoldEnded)
    async def on_hold_ended(self, env: Envelope[events.HoldEnded]) -> None:
        """The hold ended: by the agent speaking (nothing more to do), or at its limit (the agent takes the caller
        back in a turn of its own)."""
        assert self.history is not None
        applied = await self.history.update(env.call_id, _off_hold)
        if applied is None or env.data.reason != "timeout":
            return
        await self._note(env, f"The caller has been on hold for {round(env.data.held_s)} s, the longest allowed. "
                              "Thank them for holding and tell them where things stand.")
        await self._agent_turn(env, f"hold-ended-{env.id}")

    @turns.on(events.TransferFailed)
    async def on_transfer_failed(self, env: Envelope[events.TransferFailed]) -> None:
        """The transport could not transfer: the model is told, and says so in a turn of its own."""
        await self._note(env, f"The transfer could not be made ({env.data.reason}). Tell the caller and offer "
                              "other help.")
        if env.data.requested_by == "agent":
            await self._agent_turn(env, f"transfer-failed-{env.id}")

    async def _agent_turn(self, env: Envelope[Any], turn_id: str) -> None:
        """The agent speaks without a caller turn, when no other turn is open (see ``CallHistory.add_agent_turn``)."""
        assert self.history is not None
        applied = await self.history.update(env.call_id, lambda h: h.add_agent_turn(turn_id, h.epoch))
        if applied is None or not applied[1]:
            return
        h = applied[0]
        await self._start_reply(env.model_copy(update={"epoch": h.epoch, "turn_id": turn_id}), h, turn_id)

    @turns.on(events.CallEnded)
    async def on_call_ended(self, env: Envelope[events.CallEnded]) -> None:
        assert self.history is not None
        if self.early is not None:
            self.early.drop(env.call_id, "call_ended")
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
