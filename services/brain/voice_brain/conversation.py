"""The conversation of one call as data and pure operations: no bus, no KV, no clock of its own.

``CallHistory`` is what brain keeps per call (in JetStream KV, see ``history.py``, so any replica can take the
next turn). Its methods are the state changes the handlers make. Each runs inside a compare-and-set retry loop,
possibly more than once on fresh copies, so each is a deterministic function of the history and its arguments
(times are passed in) and returns what the caller acts on instead of setting flags in closures.

What the caller heard: a reply is a list of chunks (sentences); ingress reports each chunk that finished
playing (``mark_heard``) and, when playout ends, the full set (``settle``). A reply cut off by a barge-in
keeps only the heard chunks, in the turn and in the prompt of the next turn.

The latest caller turn (``current_turn``) is recorded here, not in a replica's memory: a reply of an older turn,
on whichever replica streams it, finds itself superseded at its next chunk (``record_chunk`` returns False) and
is closed with an empty final chunk (``close_superseded``).

Bounded (every mark rewrites the whole value, and a KV value is limited to 1 MiB): ``compact`` (applied by the
store on every write) keeps a window of recent messages and folds older ones into a running extractive summary
(the first sentence of each message, the call's opening lines and the most recent ones within a character
budget); a turn's bookkeeping (``TurnState``) is dropped once its ``turn.completed`` is published (``forget``),
leaving its id in a bounded list so a redelivered transcript is still recognised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from voice_schemas import events

GREETING = "greeting"

END_CALL = "end_call"
END_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": END_CALL,
        "description": "Hang up the phone call after saying goodbye, when the caller is done.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
}


def iso(wall_ms: float) -> str:
    """ISO-8601 UTC time of a wall-clock instant in milliseconds."""
    return datetime.fromtimestamp(wall_ms / 1000, UTC).isoformat()


def span_ms(start: float | None, end: float | None) -> float | None:
    """``end - start`` rounded to 0.1 ms; None when either is unknown (0 counts as unknown)."""
    return round(end - start, 1) if start and end else None


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """What brain keeps per call. With these defaults a stored history is a few KiB in a typical call; the worst
    case is the window (``window_chars`` plus JSON per message) + the summary + ``turns`` unsettled turns (each at
    most the agent's ``max_tokens`` of reply) + ``recent_turn_ids`` ids: well under the 1 MiB KV value limit."""

    window_messages: int = 40  # MAX_HISTORY_MESSAGES: recent messages kept verbatim (and sent in every prompt)
    window_chars: int = 16_000  # MAX_HISTORY_CHARS: and at most this much text in them
    window_turns: int = 20  # MAX_HISTORY_TURNS: and at most this many caller turns
    # over any window bound, the window is cut to this share of each bound at once (1.0: just under it), so its
    # start (and the summary) stays put for several turns and the LLM server's prompt cache keeps matching
    trim_to: float = 1.0
    message_chars: int = 2_000  # one message longer than this is cut (a very long transcript or note)
    summary_chars: int = 4_000  # the summary of older messages
    summary_line_chars: int = 160  # one summary line: the first sentence of a message, cut at a word
    turns: int = 8  # TurnStates kept: the open turns (normally 1-2); the oldest beyond this are dropped
    supervisor_notes: int = 8  # whispers kept (the newest); each in every prompt, right after the system prompt
    supervisor_note_chars: int = 1_000  # one whisper longer than this is cut
    recent_turn_ids: int = 64  # ids of dropped turns, for redelivery detection
    tool_calls: int = 8  # tool calls waiting for (or just past) a supervisor's decision; the oldest decided go first


SUPERVISOR_NOTE = "Instruction from your supervisor (the caller cannot hear this): "
PENDING_APPROVAL = '{"status": "pending", "detail": "waiting for a supervisor to approve this call; not run yet"}'

SUMMARY_HEAD_LINES = 4  # the call's opening lines stay in the summary (why the caller called)
SUMMARY_TITLE = "Summary of the earlier part of this call (first sentence of each message, oldest first):"
_ROLE_LABEL = {"user": "Caller", "assistant": "Agent", "system": "Note", "tool": "Tool result"}
_FIRST_SENTENCE = re.compile(r"^.*?[.!?…](?=\s|$)", re.S)


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, cut with an ellipsis (at a word boundary unless that loses half)."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    at_word = head.rsplit(" ", 1)[0]
    return (at_word if len(at_word) >= limit // 2 else head) + "…"


def summary_line(message: dict[str, Any], limit: int) -> str | None:
    """A message as one summary line: who said it and its first sentence; None when it says nothing."""
    text = " ".join(str(message.get("content") or "").split())
    if not text:
        return None
    m = _FIRST_SENTENCE.match(text)
    first = m.group(0) if m else text
    label = _ROLE_LABEL.get(str(message.get("role")), "Note")
    return _cut(f"{label}: {first}", limit)


@dataclass(frozen=True, slots=True)
class ReplyTimings:
    """When the model started, produced its first token and its first complete sentence (wall ms / ms)."""

    llm_start_wall_ms: float
    llm_first_token_ms: float | None
    llm_first_sentence_ms: float | None
    first_sentence_wall_ms: float
    early_start_ms: float | None = None  # begun on the likely-final transcript this long before the final one


@dataclass(frozen=True, slots=True)
class SentChunk:
    """One reply chunk as it goes out. ``timings`` only on the first chunk of a reply."""

    index: int
    text: str
    final: bool
    hang_up: bool = False
    timings: ReplyTimings | None = None
    superseded: bool = False  # the empty final chunk that closes a superseded reply


class TurnState(BaseModel):
    turn_id: str
    epoch: int = 0
    caller_text: str | None = None
    caller_started_at: str | None = None
    caller_ended_at: str | None = None
    chunks: list[str] = Field(default_factory=list)
    reply_done: bool = False
    heard_chunks: list[int] = Field(default_factory=list)
    interrupted: bool = False
    completed: bool = False
    speech_end_wall_ms: float = 0.0
    end_of_turn_ms: float | None = None
    stt_ms: float | None = None
    llm_start_wall_ms: float | None = None
    llm_first_token_ms: float | None = None
    llm_first_sentence_ms: float | None = None
    first_sentence_wall_ms: float | None = None
    early_start_ms: float | None = None  # the reply began on the likely-final transcript (voice_brain.early)
    first_audio_wall_ms: float | None = None
    tts_first_audio_ms: float | None = None  # tts's time to the reply's first frame, as ingress reported it
    agent_started_at: str | None = None
    hangup_after: bool = False
    attempt: int = 0  # bumped when another replica takes the reply over: the old one's chunks are refused
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    llm_tokens_estimated: bool = False
    knowledge: str | None = None  # the knowledge message of the turn's prompt (bounded by the agent's max_chars)
    sources: list[events.KnowledgeSource] = Field(default_factory=list)  # the chunks in it
    intent: events.TurnIntent | None = None  # the caller's words matched this intent (voice_brain.intents)


class HeldToolCall(BaseModel):
    """A tool call that needs a supervisor's approval: durable (in the call's history), so the decision and the
    timeout are acted on by whichever replica is alive. ``pending`` until decided (``approved`` / ``denied``),
    then ``done`` once its result is in the history."""

    tool_call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    turn_id: str
    state: Literal["pending", "approved", "denied", "done"] = "pending"
    requested_ms: float
    deadline_ms: float
    decided_by: str | None = None


class CallHistory(BaseModel):
    call_id: str
    tenant_id: str
    agent_id: str
    agent_version: int
    text_only: bool = False  # a text chat: no playout, a reply is delivered once its final chunk is sent
    epoch: int = 0
    ended: bool = False
    current_turn: str | None = None  # the latest caller turn: a reply of any other turn is superseded
    messages: list[dict[str, Any]] = Field(default_factory=list)  # the recent window
    summary: list[str] = Field(default_factory=list)  # lines for the messages that left the window
    summary_omitted: int = 0  # lines dropped from the middle of the summary (its budget)
    turns: dict[str, TurnState] = Field(default_factory=dict)  # turns not yet completed and published
    recent_turn_ids: list[str] = Field(default_factory=list)  # turns forgotten since (redelivery detection)
    # supervisor whispers as {"id": event id, "text": ...}, oldest first: kept out of the window (never summarised
    # away) and bounded by ``HistoryLimits.supervisor_notes``
    supervisor_notes: list[dict[str, str]] = Field(default_factory=list)
    held_tools: list[HeldToolCall] = Field(default_factory=list)  # tool calls awaiting a supervisor (bounded)
    on_hold: bool = False  # the agent put the caller on hold (control.hold) and no call.hold_ended came yet

    # ------------------------------------------------------------ reading
    def heard_text(self, turn: TurnState) -> str:
        if turn.interrupted:
            heard = [turn.chunks[i] for i in sorted(set(turn.heard_chunks)) if i < len(turn.chunks)]
        else:
            heard = turn.chunks
        return " ".join(c for c in heard if c)

    def summary_text(self) -> str | None:
        if not self.summary:
            return None
        lines = list(self.summary)
        if self.summary_omitted:
            lines.insert(min(len(lines), SUMMARY_HEAD_LINES), f"[{self.summary_omitted} more lines omitted]")
        return "\n".join([SUMMARY_TITLE, *lines])

    def prompt(self, system_prompt: str, knowledge: str | None = None) -> list[dict[str, Any]]:
        """The chat messages for the next completion, ordered for the LLM server's prompt cache (it reuses the
        longest prefix it evaluated before): the fixed system prompt first (``prompting.system_prompt``: never
        anything of the turn), then what changes seldom, then what changes every turn: the supervisor's whispers
        (each a system message, oldest first), the summary of the earlier call (once there is one), the recent
        window (it only grows between compactions), and the knowledge retrieved for the current turn
        (``knowledge``, else what the turn stored: one system message) right before the current turn's caller
        words, so the turn's tool rounds reuse the whole prefix and the next turn the window up to this one."""
        head = [{"role": "system", "content": system_prompt}]
        head += [{"role": "system", "content": SUPERVISOR_NOTE + n["text"]} for n in self.supervisor_notes]
        summary = self.summary_text()
        if summary:
            head.append({"role": "system", "content": summary})
        window = self._window_messages()
        current = self.turns.get(self.current_turn) if self.current_turn else None
        knowledge = knowledge or (current.knowledge if current is not None else None)
        if knowledge:
            at = next((i for i, m in enumerate(self.messages) if m["role"] == "user"
                       and m.get("turn_id") == self.current_turn), None)
            # the window's index of that message (orphaned tool results are left out of the window)
            at = len(window) if at is None else len(self._window_messages(self.messages[:at]))
            window.insert(at, {"role": "system", "content": knowledge})
        return head + window

    def _window_messages(self, messages: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The window as chat messages. A tool result is sent only after the assistant message that called it (the
        window's start may have cut that message off: an orphaned result is dropped, as providers refuse it)."""
        out: list[dict[str, Any]] = []
        announced: set[str] = set()
        for m in self.messages if messages is None else messages:
            if m["role"] == "tool":
                if m.get("tool_call_id") in announced:
                    out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]})
            elif m.get("tool_calls"):
                announced.update(c["id"] for c in m["tool_calls"])
                # "" not None: llama.cpp's server refuses an assistant message whose content is null
                out.append({"role": "assistant", "content": m["content"] or "", "tool_calls": m["tool_calls"]})
            else:
                out.append({"role": m["role"], "content": m["content"]})
        return out

    def knows_turn(self, turn_id: str) -> bool:
        """The turn was added (it may since have been completed and forgotten)."""
        return turn_id in self.turns or turn_id in self.recent_turn_ids

    def open_turn(self, turn_id: str | None) -> TurnState | None:
        """The turn while it still takes playout reports (None once completed or unknown)."""
        t = self.turns.get(turn_id) if turn_id else None
        return t if t is not None and not t.completed else None

    # ------------------------------------------------------------ the agent speaks first
    def greet(self, text: str, now_ms: float) -> bool:
        """Record the greeting; False when it was already recorded (a redelivered ``CallAnswered``)."""
        if self.knows_turn(GREETING):
            return False
        self.turns[GREETING] = TurnState(turn_id=GREETING, chunks=[text], reply_done=True,
                                         agent_started_at=iso(now_ms), first_sentence_wall_ms=now_ms)
        self.messages.append({"role": "assistant", "content": text, "turn_id": GREETING})
        return True

    def add_agent_turn(self, turn_id: str, epoch: int) -> bool:
        """A turn the agent starts without the caller (telling a supervisor's decision): only while the call's
        latest turn is complete (its reply played or cut off), so it never talks over the agent's own reply; False
        otherwise, and for a redelivery or an ended call. (Then the model reads the outcome in the next turn.)"""
        if self.ended or self.knows_turn(turn_id) or self.open_turn(self.current_turn) is not None:
            return False
        self.epoch = max(self.epoch, epoch)
        self.current_turn = turn_id
        self.turns[turn_id] = TurnState(turn_id=turn_id, epoch=self.epoch)
        return True

    # ------------------------------------------------------------ a caller turn
    def add_caller_turn(self, turn_id: str, epoch: int, transcript: events.TranscriptFinalized) -> bool:
        """Add the caller's words as a new turn; False (nothing changed) for a redelivered transcript, an
        ended call, a stale epoch or empty text."""
        text = transcript.text.strip()
        if not text or self.knows_turn(turn_id) or self.ended or epoch < self.epoch:
            return False
        self.epoch = max(self.epoch, epoch)
        self.current_turn = turn_id
        d = transcript
        voice = not self.text_only  # a typed message has no end-of-turn decision and no transcription
        self.turns[turn_id] = TurnState(
            turn_id=turn_id, epoch=epoch, caller_text=text,
            caller_started_at=iso(d.speech_end_wall_ms - (d.end_ms - d.start_ms)) if d.speech_end_wall_ms else None,
            caller_ended_at=iso(d.speech_end_wall_ms) if d.speech_end_wall_ms else None,
            speech_end_wall_ms=d.speech_end_wall_ms, end_of_turn_ms=d.end_of_turn_ms if voice else None,
            stt_ms=d.stt_ms if voice else None,
        )
        self.messages.append({"role": "user", "content": text, "turn_id": turn_id})
        return True

    def is_superseded(self, turn_id: str) -> bool:
        """A newer caller turn was added, or the call ended: the reply of ``turn_id`` must stop."""
        return self.ended or (self.current_turn is not None and self.current_turn != turn_id)

    def record_chunk(self, turn_id: str, chunk: SentChunk, attempt: int = 0) -> bool:
        """A reply chunk goes out (published right after this is stored). False, and nothing recorded, when the
        turn is superseded, or its reply was taken over by another attempt: the chunk must not be published."""
        if self.is_superseded(turn_id):
            return False
        t = self.turns.get(turn_id)
        if t is None:
            return True
        if t.attempt != attempt:
            return False
        if chunk.index < len(t.chunks):
            t.chunks[chunk.index] = chunk.text
        else:
            t.chunks.append(chunk.text)
        t.reply_done = chunk.final
        t.hangup_after = t.hangup_after or (chunk.final and chunk.hang_up)
        if chunk.timings is not None:
            x = chunk.timings
            t.llm_start_wall_ms = x.llm_start_wall_ms
            t.llm_first_token_ms = x.llm_first_token_ms
            t.llm_first_sentence_ms = x.llm_first_sentence_ms
            t.first_sentence_wall_ms = x.first_sentence_wall_ms
            t.early_start_ms = x.early_start_ms
            t.agent_started_at = iso(x.first_sentence_wall_ms)
        return True

    def needs_reply(self, turn_id: str) -> bool:
        """The turn is the call's, unanswered so far (its reply not finished), not superseded."""
        t = self.turns.get(turn_id)
        return t is not None and not t.reply_done and not t.completed and not self.is_superseded(turn_id)

    def take_over(self, turn_id: str) -> tuple[int, int] | None:
        """The replica streaming this turn's reply is gone (its transcript came back to another one): a new attempt,
        so a late chunk of the old one is refused. ``(attempt, chunks already sent)``, or None when there is nothing
        to take over (the reply is complete or settled, the turn unknown, superseded or the call ended)."""
        t = self.turns.get(turn_id)
        if t is None or t.reply_done or t.completed or self.is_superseded(turn_id):
            return None
        t.attempt += 1
        return t.attempt, len(t.chunks)

    def close_superseded(self, turn_id: str, index: int) -> None:
        """The superseded reply ends with an empty final chunk at ``index`` (the chunks before it went out); the
        turn counts as interrupted, so only what the caller heard of it stays."""
        t = self.turns.get(turn_id)
        if t is None or t.completed:
            return
        t.chunks = [*t.chunks[:index], ""]
        t.reply_done = True
        t.interrupted = True

    # ------------------------------------------------------------ what the caller heard
    def note_first_audio(self, turn_id: str | None, wall_ms: float, tts_ms: float | None = None) -> None:
        t = self.open_turn(turn_id)
        if t is not None and t.first_audio_wall_ms is None:
            t.first_audio_wall_ms = wall_ms
            t.tts_first_audio_ms = tts_ms

    def mark_heard(self, turn_id: str | None, chunk: int) -> None:
        """A chunk finished playing. Ignored once the turn is settled: a mark that arrives after the
        playout report of a barge-in must not add words the caller never heard to the settled reply."""
        t = self.open_turn(turn_id)
        if t is not None:
            t.heard_chunks.append(chunk)

    def settle(self, turn_id: str | None, heard_chunks: list[int], cleared: bool) -> TurnState | None:
        """Playout of the turn ended: complete it with what was heard and put that in the prompt history.
        Returns a copy of the completed turn to publish; for a turn already completed but not yet forgotten (its
        publication may have failed) the same turn again, unchanged; None once forgotten or unknown."""
        t = self.turns.get(turn_id) if turn_id else None
        if t is None:
            return None
        if t.completed:
            return t.model_copy()
        t.heard_chunks = sorted(set(t.heard_chunks) | set(heard_chunks))
        if cleared or not t.reply_done:
            t.interrupted = True
        t.completed = True
        heard = self.heard_text(t)
        for m in self.messages:
            if m.get("turn_id") == t.turn_id and m["role"] == "assistant" and not m.get("tool_calls"):
                m["content"] = heard
                break
        else:
            self.messages.append({"role": "assistant", "content": heard, "turn_id": t.turn_id})
        return t.model_copy()

    def deliver_text(self, turn_id: str) -> TurnState | None:
        """A text-only call (chat) has no playout to report what was heard: a reply reached the user in full once
        its final chunk was sent. Settles the turn with every sent chunk heard (a superseded reply stays
        interrupted); None until its final chunk is recorded, or once the turn is forgotten."""
        t = self.turns.get(turn_id)
        if t is None or not t.reply_done:
            return None
        return self.settle(turn_id, list(range(len(t.chunks))), cleared=False)

    def forget(self, turn_id: str) -> None:
        """The turn's ``turn.completed`` is published: drop its bookkeeping, remember its id."""
        t = self.turns.get(turn_id)
        if t is not None and t.completed:
            del self.turns[turn_id]
            self.recent_turn_ids.append(turn_id)

    # ------------------------------------------------------------ tools
    def record_tool_round(self, turn_id: str, calls: list[tuple[str, str, dict[str, Any]]],
                          results: dict[str, str]) -> None:
        """The model called tools (``(id, name, arguments)``); ``results`` holds what each returned, as the model
        will read it (a held call's is ``PENDING_APPROVAL`` until decided). Recorded even when the turn has been
        superseded since: the calls happened."""
        self.messages.append({
            "role": "assistant", "content": "", "turn_id": turn_id,
            "tool_calls": [{"id": i, "type": "function",
                            "function": {"name": n, "arguments": json.dumps(a, separators=(",", ":"))}}
                           for i, n, a in calls],
        })
        for i, _, _ in calls:
            self.messages.append({"role": "tool", "tool_call_id": i, "content": results.get(i, ""),
                                  "turn_id": turn_id})

    def hold_tool(self, held: HeldToolCall) -> bool:
        """A tool call waits for a supervisor; False when already held (a repeated request)."""
        if self.ended or any(h.tool_call_id == held.tool_call_id for h in self.held_tools):
            return False
        self.held_tools.append(held)
        return True

    def held(self, tool_call_id: str) -> HeldToolCall | None:
        return next((h for h in self.held_tools if h.tool_call_id == tool_call_id), None)

    def decide_tool(self, tool_call_id: str, approved: bool, decided_by: str) -> HeldToolCall | None:
        """The first decision on a pending call wins (a supervisor's or the timeout's): its copy, now approved or
        denied; None for an unknown call or one already decided (a late or repeated decision changes nothing)."""
        h = self.held(tool_call_id)
        if h is None or h.state != "pending":
            return None
        h.state = "approved" if approved else "denied"
        h.decided_by = decided_by
        return h.model_copy()

    def tool_result(self, tool_call_id: str, content: str, note: str) -> None:
        """A held call's outcome: its result replaces the pending placeholder (a result message the window has
        let go of is told as a note instead), and ``note`` tells the model what happened."""
        h = self.held(tool_call_id)
        if h is not None:
            h.state = "done"
        for m in self.messages:
            if m["role"] == "tool" and m.get("tool_call_id") == tool_call_id:
                m["content"] = content
                break
        else:
            note = f"{note} Result: {content}"
        self.add_note(note)

    def note_knowledge(self, turn_id: str, text: str, sources: list[events.KnowledgeSource]) -> None:
        """The knowledge retrieved for the turn: in its prompts (tool rounds too) and, as sources, in its
        ``turn.completed``."""
        t = self.turns.get(turn_id)
        if t is not None:
            t.knowledge = text
            t.sources = list(sources)

    def note_intent(self, turn_id: str, intent: events.TurnIntent, hint: str | None) -> None:
        """The intent the turn's words matched (in its ``turn.completed``); ``hint`` joins the turn's knowledge
        message, so every completion of the turn (tool rounds too) reads it after the fixed system prompt."""
        t = self.turns.get(turn_id)
        if t is not None:
            t.intent = intent
            if hint and not (t.knowledge or "").startswith(hint):
                t.knowledge = "\n\n".join(x for x in (hint, t.knowledge) if x)

    def add_usage(self, turn_id: str, input_tokens: int, output_tokens: int, estimated: bool) -> None:
        t = self.turns.get(turn_id)
        if t is not None:
            t.llm_input_tokens += input_tokens
            t.llm_output_tokens += output_tokens
            t.llm_tokens_estimated = t.llm_tokens_estimated or estimated

    # ------------------------------------------------------------ notes and the end
    def add_note(self, text: str) -> None:
        """An instruction for the model the caller does not hear (whisper, DTMF, a supervisor's decision)."""
        self.messages.append({"role": "system", "content": text})

    def add_supervisor_note(self, note_id: str, text: str) -> bool:
        """A supervisor's whisper: followed from the next reply on, never spoken. False for a redelivered one
        (same ``note_id``) or empty text. ``compact`` keeps the newest and cuts long ones."""
        text = " ".join(text.split())
        if not text or self.ended or any(n["id"] == note_id for n in self.supervisor_notes):
            return False
        self.supervisor_notes.append({"id": note_id, "text": text})
        return True

    def end(self) -> list[TurnState]:
        """The call ended: close it to new turns; returns copies of the turns that had started speaking but
        were never settled (completed now, interrupted unless every chunk was heard)."""
        self.ended = True
        unfinished: list[TurnState] = []
        for t in self.turns.values():
            if not t.completed and t.chunks:
                t.completed = True
                t.interrupted = t.interrupted or not t.reply_done or len(set(t.heard_chunks)) < len(t.chunks)
                if t.interrupted:
                    t.heard_chunks = sorted(set(t.heard_chunks))
                unfinished.append(t.model_copy())
        return unfinished

    # ------------------------------------------------------------ bounds
    def compact(self, limits: HistoryLimits) -> None:
        """Bring the history within ``limits`` (see the module docstring). Deterministic and idempotent."""
        for m in self.messages:
            if isinstance(m.get("content"), str) and len(m["content"]) > limits.message_chars:
                m["content"] = _cut(m["content"], limits.message_chars)
        chars = sum(len(str(m.get("content") or "")) for m in self.messages)
        turns = sum(m["role"] == "user" for m in self.messages)
        if (len(self.messages) > limits.window_messages or chars > limits.window_chars
                or turns > limits.window_turns):
            keep_messages = max(1, int(limits.window_messages * limits.trim_to))
            keep_chars = int(limits.window_chars * limits.trim_to)
            keep_turns = max(1, int(limits.window_turns * limits.trim_to))
        else:
            keep_messages, keep_chars, keep_turns = limits.window_messages, limits.window_chars, limits.window_turns
        while self.messages and (len(self.messages) > keep_messages or chars > keep_chars or turns > keep_turns):
            old = self.messages.pop(0)
            chars -= len(str(old.get("content") or ""))
            turns -= old["role"] == "user"
            line = summary_line(old, limits.summary_line_chars)
            if line is not None:
                self.summary.append(line)
        size = sum(len(x) + 1 for x in self.summary)
        while size > limits.summary_chars and len(self.summary) > SUMMARY_HEAD_LINES:
            size -= len(self.summary.pop(SUMMARY_HEAD_LINES)) + 1  # the oldest line after the call's opening
            self.summary_omitted += 1
        del self.supervisor_notes[: max(len(self.supervisor_notes) - limits.supervisor_notes, 0)]
        for n in self.supervisor_notes:
            n["text"] = _cut(n["text"], limits.supervisor_note_chars)
        for turn_id in list(self.turns)[: max(len(self.turns) - limits.turns, 0)]:
            if turn_id != self.current_turn:
                del self.turns[turn_id]  # never settled (no playout report came): given up
                self.recent_turn_ids.append(turn_id)
        del self.recent_turn_ids[: max(len(self.recent_turn_ids) - limits.recent_turn_ids, 0)]
        while len(self.held_tools) > limits.tool_calls:
            done = next((h for h in self.held_tools if h.state == "done"), None)
            self.held_tools.remove(done if done is not None else self.held_tools[0])


def turn_completed(h: CallHistory, t: TurnState, now_ms: float) -> events.TurnCompleted:
    """The ``turn.completed`` fact for a settled turn, with its latency breakdown."""
    latency = events.LatencyBreakdown(
        end_of_turn_ms=t.end_of_turn_ms, stt_ms=t.stt_ms, llm_first_token_ms=t.llm_first_token_ms,
        llm_first_sentence_ms=t.llm_first_sentence_ms, early_start_ms=t.early_start_ms,
        tts_first_audio_ms=t.tts_first_audio_ms,
        bus_and_playout_ms=span_ms(t.first_sentence_wall_ms, t.first_audio_wall_ms),
        voice_to_voice_ms=span_ms(t.speech_end_wall_ms, t.first_audio_wall_ms),
    )
    started = t.agent_started_at or iso(t.first_audio_wall_ms if t.first_audio_wall_ms else now_ms)
    return events.TurnCompleted(
        caller_text=t.caller_text, caller_started_at=t.caller_started_at, caller_ended_at=t.caller_ended_at,
        agent_text=h.heard_text(t), agent_started_at=started, agent_ended_at=iso(now_ms),
        interrupted=t.interrupted, latency=latency,
        usage=events.TurnUsage(llm_input_tokens=t.llm_input_tokens, llm_output_tokens=t.llm_output_tokens,
                               llm_tokens_estimated=t.llm_tokens_estimated,
                               tts_characters=0 if h.text_only else sum(len(c) for c in t.chunks)),
        sources=t.sources, intent=t.intent,
    )
