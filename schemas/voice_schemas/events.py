"""Payloads of every durable event the platform carries.

Events are past-tense facts (``TranscriptFinalized``); commands are imperative (``HangUp``).
Each class declares its type string, its subject tokens under ``call.<call_id>`` and its transport.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .envelope import Payload, register


class Channel(StrEnum):
    twilio = "twilio"
    sip = "sip"
    webrtc = "webrtc"
    chat = "chat"  # text only: no media, stt or tts stage
    test = "test"


class EndReason(StrEnum):
    caller_hangup = "caller_hangup"
    agent_hangup = "agent_hangup"
    transferred = "transferred"
    status_callback = "status_callback"
    no_agent = "no_agent"
    protocol_error = "protocol_error"
    connection_lost = "connection_lost"
    timeout = "timeout"
    error = "error"
    shutdown = "shutdown"
    supervisor = "supervisor"  # ended by a supervisor or an API client (POST /v1/calls/{id}/end)
    ingress_lost = "ingress_lost"  # the ingress replica holding the caller's connection died
    busy = "busy"  # an outbound call: the callee was busy
    no_answer = "no_answer"  # an outbound call: nobody answered in time
    dial_failed = "dial_failed"  # an outbound call could not be placed (provider or trunk refused, unreachable)
    machine = "machine"  # an outbound call reached an answering machine and the agent's rule hangs up


# ---------------------------------------------------------------- lifecycle
@register
class CallStarted(Payload):
    TYPE = "call.started"
    SUBJECT = ("lifecycle", "started")
    DESCRIPTION = "A call was created and routed to an agent."
    agent_id: str
    agent_version: int
    channel: Channel
    from_number: str | None = Field(default=None, description="Caller number (personal data)")
    to_number: str | None = Field(default=None, description="Called number (personal data)")
    provider_call_id: str | None = None


@register
class CallAnswered(Payload):
    TYPE = "call.answered"
    SUBJECT = ("lifecycle", "answered")
    DESCRIPTION = "The caller's media connection is up; audio flows."
    stream_id: str | None = None
    media_format: str = "audio/x-mulaw;rate=8000"
    greet: bool = Field(True, description="Whether the agent greets now (false: an outbound call whose agent lets the "
                        "callee speak first, or waits for the answering-machine check)")


@register
class CallEnded(Payload):
    TYPE = "call.ended"
    SUBJECT = ("lifecycle", "ended")
    DESCRIPTION = "The call ended; every service frees its state for it."
    reason: EndReason
    detail: str | None = None
    duration_s: float | None = None


DialStatus = Literal["ringing", "answered", "busy", "no_answer", "failed", "rejected"]


@register
class CallDialStatus(Payload):
    TYPE = "call.dial_status"
    SUBJECT = ("lifecycle", "dial_status")
    DESCRIPTION = ("Progress of an outbound call started through the API: ringing, answered, busy, no_answer, "
                   "failed or rejected (busy/no_answer/failed/rejected are followed by call.ended).")
    status: DialStatus
    detail: str = Field("", max_length=300)


class DialRequest(BaseModel):
    """control-api → ingress (request/reply on ``ingress_rpc("dial", "place")``): place an outbound call.
    Not a call event."""

    model_config = ConfigDict(extra="ignore")
    call_id: str
    tenant_id: str
    agent_id: str
    to_number: str = Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164 destination (personal data)")
    from_number: str | None = Field(None, description="Caller id shown to the callee (personal data)")
    channel: Literal["twilio", "sip"] = "twilio"
    trunk_id: str | None = None
    agent_speaks_first: bool = True
    machine_detection: Literal["off", "hangup", "message"] = "off"


class DialReply(BaseModel):
    """ingress → control-api: whether the dial was taken (the call's progress follows as call.dial_status)."""

    accepted: bool
    detail: str = Field("", max_length=300)


# ---------------------------------------------------------------- media / VAD
@register
class SpeechStarted(Payload):
    TYPE = "vad.speech_started"
    SUBJECT = ("vad", "started")
    DESCRIPTION = "Caller speech onset (Silero VAD)."
    at_ms: int
    agent_speaking: bool = False


@register
class SpeechStopped(Payload):
    TYPE = "vad.speech_stopped"
    SUBJECT = ("vad", "stopped")
    DESCRIPTION = "Caller speech offset."
    at_ms: int
    speech_ms: int


@register
class SpeechPaused(Payload):
    TYPE = "vad.speech_paused"
    SUBJECT = ("vad", "paused")
    DESCRIPTION = ("The caller's speech seems to have stopped (a short silence, before the speech offset is sure): "
                   "stt decodes the turn so far at once as its likely final transcript, so a reply can begin early.")
    at_ms: int = Field(description="Media time the speech seems to have stopped (the VAD's tail removed)")
    speech_ms: int = Field(0, description="Speech of the segment so far, ms")


@register
class UtteranceCaptured(Payload):
    TYPE = "utterance.captured"
    SUBJECT = ("utterance",)
    DESCRIPTION = "A caller utterance segmented at end of turn, audio attached for transcription."
    utterance_id: str
    start_ms: int
    end_ms: int
    sample_rate: int = 16_000
    audio_b64: str = Field(description="PCM16 mono little-endian audio, base64")
    end_of_turn: Literal["silence", "model", "transcript", "max_duration", "call_end"] = "silence"
    end_of_turn_ms: float = Field(0.0, description="Speech offset to end-of-turn decision, ms")
    speech_end_wall_ms: float = Field(0.0, description="Wall clock (epoch ms) of the speech offset")
    speech_end_ms: int = Field(0, description="Media time of the speech offset (0: not known)")


# ---------------------------------------------------------------- transcripts
@register
class TranscriptPartial(Payload):
    TYPE = "transcript.partial"
    SUBJECT = ("transcript", "partial")
    DESCRIPTION = ("An unstable transcript of a caller utterance in progress (its audio from start_ms to end_ms), "
                   "superseded by a later partial of the same utterance_id and by its transcript.final.")
    utterance_id: str
    text: str = Field(description="Caller speech (personal data)")
    start_ms: int = Field(0, description="Media time of the first transcribed sample")
    end_ms: int = Field(0, description="Media time up to which the audio was transcribed")
    stt_ms: float = Field(0.0, description="Time spent transcribing, ms")
    likely_final: bool = Field(False, description="The whole turn so far, decoded at a pause that may end it "
                               "(vad.speech_paused): its final transcript unless the caller goes on; brain may "
                               "prepare its reply on it, media weighs whether the words sound finished")


@register
class TranscriptFinalized(Payload):
    TYPE = "transcript.final"
    SUBJECT = ("transcript", "final")
    DESCRIPTION = "The final transcript of one caller utterance."
    utterance_id: str
    text: str = Field(description="Caller speech (personal data)")
    language: str | None = None
    start_ms: int = 0
    end_ms: int = 0
    stt_ms: float = 0.0
    end_of_turn_ms: float = 0.0
    speech_end_wall_ms: float = 0.0


# ---------------------------------------------------------------- replies
@register
class ReplyChunk(Payload):
    TYPE = "reply.chunk"
    SUBJECT = ("reply", "text")
    DESCRIPTION = "One sentence of the agent's reply, ready for synthesis."
    index: int
    text: str
    final: bool = Field(False, description="Last chunk of this turn's reply")
    voice: str | None = None
    hangup_after: bool = Field(False, description="Hang up once this chunk has played")
    speech_end_wall_ms: float = 0.0
    text_only: bool = Field(
        False, description="A text-only call (channel chat): the text is delivered as it is, never synthesised"
    )


class LatencyBreakdown(Payload):
    """Per-stage milliseconds of one turn (not an event on its own)."""

    end_of_turn_ms: float | None = None
    stt_ms: float | None = None
    llm_first_token_ms: float | None = None
    llm_first_sentence_ms: float | None = None
    tts_first_audio_ms: float | None = None
    bus_and_playout_ms: float | None = None
    voice_to_voice_ms: float | None = None
    early_start_ms: float | None = Field(None, description="The reply's model request began this long before the "
                                         "final transcript, on the likely-final one (None: it began after)")


class TurnUsage(Payload):
    """What the turn consumed, for cost: the model's tokens (as the endpoint reported them; estimated from text
    when it reports none) over every completion of the turn (tool rounds included), and the characters sent to
    speech synthesis (every chunk, heard or not)."""

    llm_input_tokens: int = Field(0, ge=0)
    llm_output_tokens: int = Field(0, ge=0)
    llm_tokens_estimated: bool = False
    tts_characters: int = Field(0, ge=0)


class KnowledgeSource(Payload):
    """A knowledge chunk a turn's reply was given (not an event on its own): which document it came from and how
    well it matched the caller's words (``score``: the ranking of ``voice_brain.knowledge``, higher is better)."""

    chunk_id: str
    knowledge_base_id: str
    document_id: str
    document_name: str = Field(max_length=256)
    score: float


class TurnIntent(Payload):
    """The intent a caller turn was classified as (not an event on its own): ``confidence`` is the cosine of the
    closest example (``method`` embedding) or the word overlap (``lexical``, when the model could not load);
    ``cached``: answered with the intent's fixed answer, without an LLM request."""

    name: str = Field(max_length=64)
    confidence: float
    method: Literal["embedding", "lexical"] = "embedding"
    cached: bool = False


@register
class TurnCompleted(Payload):
    TYPE = "turn.completed"
    SUBJECT = ("turn", "completed")
    DESCRIPTION = "A caller utterance and the agent's reply, with what the caller actually heard."
    caller_text: str | None = None
    caller_started_at: str | None = None
    caller_ended_at: str | None = None
    agent_text: str = ""
    agent_started_at: str | None = None
    agent_ended_at: str | None = None
    interrupted: bool = False
    latency: LatencyBreakdown = Field(default_factory=LatencyBreakdown)
    usage: TurnUsage = Field(default_factory=lambda: TurnUsage())
    sources: list[KnowledgeSource] = Field(
        default_factory=list, max_length=8, description="Knowledge chunks retrieved into the turn's prompt"
    )
    intent: TurnIntent | None = Field(
        None, description="The intent the caller's words matched (at or above the agent's threshold), if any"
    )


# ---------------------------------------------------------------- playout (ingress -> platform)
@register
class PlayoutStarted(Payload):
    TYPE = "playout.started"
    SUBJECT = ("playout", "started")
    DESCRIPTION = "The first agent audio frame of a turn was sent to the caller."
    first_audio_wall_ms: float = 0.0
    tts_first_audio_ms: float | None = Field(
        None, ge=0, description="tts's time from the reply's first chunk to its first frame (None: not reported)")


@register
class PlayoutMarked(Payload):
    TYPE = "playout.mark"
    SUBJECT = ("playout", "mark")
    DESCRIPTION = "The caller has heard the reply chunk up to this mark."
    chunk: int


@register
class PlayoutFinished(Payload):
    TYPE = "playout.finished"
    SUBJECT = ("playout", "finished")
    DESCRIPTION = "All agent audio of a turn has played (or was cleared)."
    cleared: bool = False
    heard_chunks: list[int] = Field(default_factory=list)


# ---------------------------------------------------------------- control commands
@register
class PausePlayout(Payload):
    TYPE = "control.pause"
    SUBJECT = ("control", "pause")
    DESCRIPTION = "Stop sending agent audio at once (caller may be barging in); keep it buffered."


@register
class ResumePlayout(Payload):
    TYPE = "control.resume"
    SUBJECT = ("control", "resume")
    DESCRIPTION = "The suspected barge-in was noise: resume playout where it paused."


@register
class BargeIn(Payload):
    TYPE = "control.barge_in"
    SUBJECT = ("control", "barge_in")
    DESCRIPTION = "Committed barge-in: clear playout, cancel the turn; envelope epoch is the new epoch."
    at_ms: int
    speech_ms: int = 0


@register
class HangUp(Payload):
    TYPE = "control.hangup"
    SUBJECT = ("control", "hangup")
    DESCRIPTION = "End the call (after pending audio has played when after_playout)."
    reason: EndReason = EndReason.agent_hangup
    after_playout: bool = True


@register
class Transfer(Payload):
    TYPE = "control.transfer"
    SUBJECT = ("control", "transfer")
    DESCRIPTION = "Transfer the caller to another number or SIP URI."
    target: str = Field(description="Destination (personal data)")
    after_playout: bool = Field(False, description="Carry it out once the agent's queued audio has played "
                                "(the agent's 'I am transferring you now')")
    requested_by: Literal["agent", "supervisor"] = "agent"


@register
class TransferFailed(Payload):
    TYPE = "call.transfer_failed"
    SUBJECT = ("lifecycle", "transfer_failed")
    DESCRIPTION = ("A transfer could not be carried out (the transport cannot, or the provider refused); "
                   "the call goes on.")
    reason: str = Field(max_length=300)
    requested_by: Literal["agent", "supervisor"] = "agent"


@register
class SendDtmf(Payload):
    TYPE = "control.send_dtmf"
    SUBJECT = ("control", "send_dtmf")
    DESCRIPTION = ("Press keys towards the caller's side (RFC 4733 on SIP, in-band tones otherwise), after the "
                   "agent's queued audio has played when after_playout.")
    digits: str = Field(pattern=r"^[0-9*#A-D]{1,32}$", description="The keys, in order (personal data)")
    after_playout: bool = True
    requested_by: Literal["agent", "supervisor"] = "agent"


@register
class DtmfSent(Payload):
    TYPE = "call.dtmf_sent"
    SUBJECT = ("lifecycle", "dtmf_sent")
    DESCRIPTION = "The keys of a control.send_dtmf went out to the caller's side (ok), or why they could not."
    ok: bool = True
    keys: int = Field(0, ge=0, description="How many keys were sent")
    reason: str | None = Field(None, max_length=300)
    requested_by: Literal["agent", "supervisor"] = "agent"


@register
class Hold(Payload):
    TYPE = "control.hold"
    SUBJECT = ("control", "hold")
    DESCRIPTION = ("Put the caller on hold (after the agent's queued audio when after_playout): hold audio until "
                   "the agent speaks again or max_s pass (call.hold_ended).")
    max_s: float = Field(60.0, ge=1.0, le=600.0)
    audio: Literal["tone", "silence"] = "tone"
    after_playout: bool = True


@register
class HoldEnded(Payload):
    TYPE = "call.hold_ended"
    SUBJECT = ("lifecycle", "hold_ended")
    DESCRIPTION = "A hold ended: the agent spoke again (resumed), or its time ran out (timeout)."
    reason: Literal["resumed", "timeout"]
    held_s: float = 0.0


@register
class DtmfReceived(Payload):
    TYPE = "dtmf.received"
    SUBJECT = ("dtmf",)
    DESCRIPTION = "The caller pressed a key."
    digit: str = Field(pattern=r"^[0-9*#A-D]$")


# ---------------------------------------------------------------- tools
@register
class ToolCallRequested(Payload):
    TYPE = "tool.call"
    SUBJECT = ("tool", "call")
    DESCRIPTION = "The agent called a tool."
    tool_call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


@register
class ToolResultReturned(Payload):
    TYPE = "tool.result"
    SUBJECT = ("tool", "result")
    DESCRIPTION = "A tool returned (or failed)."
    tool_call_id: str
    name: str
    ok: bool = True
    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0


@register
class ToolApprovalRequested(Payload):
    TYPE = "tool.approval_requested"
    SUBJECT = ("tool", "approval_requested")
    DESCRIPTION = "A sensitive tool call waits for a supervisor's decision."
    tool_call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = 60.0


@register
class ToolApprovalDecided(Payload):
    TYPE = "tool.approval_decided"
    SUBJECT = ("tool", "approval_decided")
    DESCRIPTION = "A supervisor approved or rejected a tool call."
    tool_call_id: str
    approved: bool
    decided_by: str
    comment: str | None = None


# ---------------------------------------------------------------- supervisor / analytics
@register
class SupervisorWhispered(Payload):
    TYPE = "supervisor.whisper"
    SUBJECT = ("supervisor", "whisper")
    DESCRIPTION = "An instruction to the agent from a supervisor; the caller does not hear it."
    text: str
    from_user: str


@register
class SentimentScored(Payload):
    TYPE = "analytics.sentiment"
    SUBJECT = ("analytics", "sentiment")
    DESCRIPTION = "Live sentiment of one utterance."
    speaker: Literal["caller", "agent"]
    utterance_id: str | None = None
    compound: float = Field(ge=-1.0, le=1.0)
    label: Literal["positive", "neutral", "negative"]
    rolling: float | None = Field(
        None, ge=-1.0, le=1.0, description="The call's rolling sentiment of this speaker after this utterance"
    )


@register
class SentimentAlert(Payload):
    TYPE = "sentiment.alert"
    SUBJECT = ("analytics", "sentiment_alert")
    DESCRIPTION = "The call's rolling caller sentiment fell to or below the agent's alert threshold."
    utterance_id: str | None = None
    rolling: float = Field(ge=-1.0, le=1.0)
    threshold: float = Field(ge=-1.0, le=1.0)


@register
class CallSummarized(Payload):
    TYPE = "analytics.summary"
    SUBJECT = ("analytics", "summary")
    DESCRIPTION = "Post-call summary, disposition, tags, KPIs and estimated cost."
    summary: str
    tags: list[str] = Field(default_factory=list)
    kpis: dict[str, float] = Field(default_factory=dict)
    disposition: str | None = Field(None, description="resolved, unresolved, transferred, callback, abandoned, "
                                    "no_conversation, dropped or other")
    source: Literal["llm", "extractive"] | None = Field(
        None, description="Who wrote the summary: the agent's model, or the deterministic extractive fallback")
    cost: dict[str, str] = Field(default_factory=dict, description="Estimated cost per line (telephony, stt, "
                                 "llm_input, llm_output, tts) and total, as decimal strings in `currency`")
    currency: str | None = Field(None, description="ISO 4217 code of `cost`")


ALL_EVENTS: tuple[type[Payload], ...] = tuple(
    c for c in list(globals().values()) if isinstance(c, type) and issubclass(c, Payload) and hasattr(c, "TYPE")
)
