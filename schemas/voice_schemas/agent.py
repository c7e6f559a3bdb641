"""Agent configuration as the data plane reads it from JetStream KV (written by control-api)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LlmSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")
    base_url: str | None = Field(
        None, max_length=2048,
        description="OpenAI-compatible endpoint of the tenant's own; the platform's endpoint (and key) when unset. "
        "Internal addresses are refused unless the operator allow-lists them (EGRESS_ALLOW).",
    )
    api_key_secret: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Name of the tenant secret holding the API key for base_url (the platform key never goes to "
        "an agent's own endpoint)",
    )
    model: str | None = Field(None, description="Model name; platform default when unset")
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    max_tokens: int = Field(160, ge=1, le=4096)
    # replies made for the ear (voice_brain.prompting, voice_brain.reply)
    max_sentences: int = Field(3, ge=1, le=50, description="A reply stops after this many sentences (the model's "
                               "text; tool lines such as fillers are not counted)")
    concise: bool = Field(True, description="Add the platform's instruction for spoken replies after the system "
                          "prompt: one to three short sentences, plain words, no lists or markdown")
    first_clause_chars: int = Field(30, ge=0, le=500, description="The reply's first clause goes to speech at a "
                                    "comma, semicolon or colon once it is this long (30: about two seconds of "
                                    "speech, time for the model to write the rest); 0: whole sentences only")


class SttSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    language: str | None = "en"


class TurnSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")
    end_of_turn_ms: int = Field(600, ge=100, le=5000, description="Silence hangover that ends a turn")
    interruptible: bool = True
    min_barge_in_ms: int = Field(
        400, ge=60, le=3000, description="Caller speech needed to commit a barge-in"
    )
    min_turn_silence_ms: int = Field(
        200, ge=60, le=2000, description="Shortest silence after which the turn model may end the turn"
    )


class RecordingSettings(BaseModel):
    """Call recording (off by default): both sides as a stereo WAV kept ``retention_days``, an optional spoken
    notice before the greeting."""

    model_config = ConfigDict(extra="ignore")
    enabled: bool = Field(False, description="Record this agent's calls (caller left, agent as played right)")
    retention_days: int = Field(30, ge=1, le=3650, description="Recordings are deleted this many days after the call")
    notice: str | None = Field(
        None, max_length=500,
        description="Spoken before the greeting of every recorded call (e.g. 'This call is recorded.')",
    )


class KnowledgeSettings(BaseModel):
    """How much of the agent's knowledge bases goes into a turn's prompt (retrieved by brain for the caller's
    words, after the fixed system prompt)."""

    model_config = ConfigDict(extra="ignore")
    top_k: int = Field(3, ge=1, le=8, description="Chunks retrieved per turn at most")
    max_chars: int = Field(2000, ge=200, le=8000, description="Characters of retrieved text per turn at most")


# ---------------------------------------------------------------- tools
TOOL_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# in an HTTP tool's url and header values: an argument of the call, and a tenant secret (both filled in by brain)
ARGUMENT_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
SECRET_PLACEHOLDER = re.compile(r"\{\{secret:([A-Za-z0-9_-]{1,64})\}\}")


class OutboundSettings(BaseModel):
    """How the agent behaves on outbound calls (POST /v1/calls)."""

    speaks_first: bool = Field(True, description="The agent greets as soon as the callee answers; false: it waits "
                               "for the callee to speak first")
    machine_detection: Literal["off", "hangup", "message"] = Field(
        "off", description="Answering-machine check: the callee speaking longer than machine_greeting_s without a "
        "pause right after answering is a machine; hangup ends the call, message says machine_message and ends it")
    machine_greeting_s: float = Field(4.0, ge=1.5, le=15.0, description="Uninterrupted speech longer than this "
                                      "right after answering counts as a machine's greeting")
    machine_message: str | None = Field(None, max_length=1000, description="What to leave on a machine (message); "
                                        "default the first message")


class ToolBase(BaseModel):
    """What every tool of an agent has: the name and description the model sees, and how a call of it is held.

    ``requires_approval``: brain says ``approval_line``, publishes ``tool.approval_requested`` and runs the tool
    only once a supervisor approves (denied on ``approval_timeout_s``). ``filler``: spoken when the tool has not
    returned after ``filler_after_ms`` (a slow lookup does not leave dead air)."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=TOOL_NAME, description="The function name the model calls (unique per agent)")
    description: str = Field("", max_length=1024, description="What the tool does, for the model")
    requires_approval: bool = Field(False, description="A supervisor approves each call before it runs")
    approval_timeout_s: float = Field(60.0, ge=5.0, le=900.0, description="Denied when no decision came by then")
    approval_line: str = Field(
        "One moment please, I need to check that with a colleague.", max_length=300,
        description="Spoken while the approval is pending",
    )
    filler: str | None = Field(None, max_length=300, description="Spoken when the tool is slow (None: silence)")
    filler_after_ms: int = Field(1500, ge=0, le=10_000, description="How long a tool may take before the filler")


class EndCallTool(ToolBase):
    """Hang up after the goodbye has played."""

    type: Literal["end_call"] = "end_call"
    name: str = Field("end_call", pattern=TOOL_NAME)
    description: str = Field("Hang up the phone call after saying goodbye, when the caller is done.",
                             max_length=1024)


class TransferTarget(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=64, description="What the model calls it (e.g. 'billing')")
    target: str = Field(
        pattern=r"^(\+[1-9][0-9]{6,14}|sips?:[^\s@]+@[^\s]+)$", max_length=256,
        description="E.164 number or SIP URI (personal data); must be on the tenant's transfer allow-list",
    )


class TransferCallTool(ToolBase):
    """Hand the caller to one of ``destinations`` (the transport carries it out)."""

    type: Literal["transfer_call"] = "transfer_call"
    name: str = Field("transfer_call", pattern=TOOL_NAME)
    description: str = Field("Transfer the caller to a person or department.", max_length=1024)
    destinations: list[TransferTarget] = Field(min_length=1, max_length=20)


class HttpTool(ToolBase):
    """An HTTP request the model can make: ``url`` and header values may hold ``{param}`` placeholders (filled
    from the validated arguments, URL-encoded in the URL) and ``{{secret:NAME}}`` (a tenant secret, never shown
    to the model or returned by the API). The remaining arguments go as the JSON body (POST/PUT/PATCH) or the
    query (GET/DELETE). The tenant-controlled URL goes through the egress guard (no internal addresses)."""

    type: Literal["http"] = "http"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema (an object) of the arguments; validated before every call",
    )
    timeout_s: float = Field(5.0, ge=0.5, le=30.0)
    max_response_bytes: int = Field(65_536, ge=256, le=1_048_576)
    response_fields: list[str] = Field(
        default_factory=list, max_length=32,
        description="Dot paths of the JSON response the model sees (empty: the whole response, cut to size)",
    )


DTMF_MAX_DIGITS = 32  # keys one send_dtmf call may press (32 keys of 100 ms tone + 60 ms gap: about 5 s)


class SendDtmfTool(ToolBase):
    """Press keys on the phone keypad (DTMF), e.g. to get through another company's phone menu, once the agent's
    current words have played: RFC 4733 events on SIP, in-band tones on a Twilio media stream or a browser call;
    refused in a text chat."""

    type: Literal["send_dtmf"] = "send_dtmf"
    name: str = Field("send_dtmf", pattern=TOOL_NAME)
    description: str = Field(
        "Press keys on the phone keypad (DTMF tones), for example to choose an option in a phone menu. "
        "The keys are sent once you have finished speaking.", max_length=1024)
    max_digits: int = Field(16, ge=1, le=DTMF_MAX_DIGITS, description="Keys one call may press at most")


class HoldTool(ToolBase):
    """Put the caller on hold: the agent says ``line``, then (once it has played) the caller hears ``audio`` for at
    most ``max_hold_s``. The hold ends when the agent speaks again (the caller spoke, a supervisor decided or
    whispered) or at the limit, when the agent thanks the caller for holding."""

    type: Literal["hold"] = "hold"
    name: str = Field("hold", pattern=TOOL_NAME)
    description: str = Field(
        "Put the caller on hold for a while, e.g. while a colleague or supervisor checks something. The caller "
        "hears the hold line, then a hold tone until you speak again.", max_length=1024)
    line: str = Field("Please hold while I check.", min_length=1, max_length=300,
                      description="Spoken before the hold starts")
    max_hold_s: int = Field(60, ge=5, le=600, description="The hold ends by itself after this many seconds")
    audio: Literal["tone", "silence"] = Field(
        "tone", description="What the caller hears on hold: a soft tone every few seconds, or silence")


ToolSpec = Annotated[EndCallTool | TransferCallTool | HttpTool | SendDtmfTool | HoldTool,
                     Field(discriminator="type")]

# ---------------------------------------------------------------- MCP servers (voice_brain.mcp_tools)
MCP_SERVER_NAME = r"^[A-Za-z][A-Za-z0-9-]{0,23}$"  # no "_": the model sees "<server>__<tool>"
MCP_TOOL_NAME = r"^[A-Za-z0-9_.-]{1,128}$"  # a tool's name on its server (MCP's own rule)
MCP_SEPARATOR = "__"


def mcp_function_name(server: str, tool: str) -> str:
    """The function name the model sees for ``tool`` of the MCP server ``server``: ``<server>__<tool>``, each
    character a function name cannot hold (``.``) as ``_``."""
    return server + MCP_SEPARATOR + re.sub(r"[^A-Za-z0-9_-]", "_", tool)


class McpAllowedTool(ToolBase):
    """One tool of an MCP server the agent may call (the allow-list entry), held like any tool (approval, filler).
    A bare string in ``allowed_tools`` is this with only ``name`` set."""

    name: str = Field(pattern=MCP_TOOL_NAME, description="The tool's name on the MCP server")
    description: str = Field("", max_length=1024, description="What the model reads (empty: the server's own)")
    timeout_s: float | None = Field(None, ge=0.5, le=60.0, description="Per call (unset: the server's timeout_s)")


class McpServerSpec(BaseModel):
    """An MCP server (streamable HTTP) whose allow-listed tools the agent can call. brain lists its tools once per
    agent version (cached ``list_ttl_s``) and offers each allowed one as ``<name>__<tool>`` with the server's input
    schema (arguments validated against it before every call). Header values may hold ``{{secret:NAME}}`` (a
    tenant secret, never shown to the model or returned by the API); the URL goes through the egress guard."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=MCP_SERVER_NAME, description="Unique per agent; the prefix of its tools' names")
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://",
                     description="The server's streamable HTTP endpoint (e.g. https://mcp.example.com/mcp)")
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    allowed_tools: list[McpAllowedTool] = Field(
        min_length=1, max_length=32,
        description="The only tools of the server the model is offered (required: a server's other tools, or "
        "ones it adds later, are never offered or run)",
    )
    timeout_s: float = Field(10.0, ge=0.5, le=60.0, description="Per call of a tool and per listing")
    list_ttl_s: int = Field(300, ge=10, le=86_400, description="How long a replica keeps the listed tools")
    max_result_bytes: int = Field(16_384, ge=256, le=262_144, description="A result longer than this is cut")

    @field_validator("allowed_tools", mode="before")
    @classmethod
    def _bare_names(cls, v: Any) -> Any:
        return [{"name": t} if isinstance(t, str) else t for t in v] if isinstance(v, list) else v

    def function_names(self) -> dict[str, McpAllowedTool]:
        """The function name of each allowed tool (the first of two that would read the same)."""
        out: dict[str, McpAllowedTool] = {}
        for t in self.allowed_tools:
            out.setdefault(mcp_function_name(self.name, t.name), t)
        return out


# ---------------------------------------------------------------- intents (voice_brain.intents)
INTENT_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class Intent(BaseModel):
    """Something callers often ask, recognised from ``examples`` (sentence embeddings, else word overlap). On a
    confident match (``AgentConfig.intent_threshold``): with ``answer`` alone, that text is the reply, at once and
    without an LLM request; with ``tool``, that tool of the agent runs at once with no arguments (``answer``, if
    any, spoken while it runs) and the LLM words its result, except ``end_call``: the answer, then hang up; with
    neither, the LLM is told the intent as a hint. Matches are counted per intent
    (``GET /v1/agents/{id}/intents/stats``)."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=INTENT_NAME, description="Unique per agent (e.g. 'opening_hours')")
    examples: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        min_length=1, max_length=50, description="Phrases callers use for it (a few paraphrases are enough)"
    )
    answer: str | None = Field(None, min_length=1, max_length=1000,
                               description="Spoken as the reply on a confident match (no LLM request)")
    tool: str | None = Field(None, pattern=TOOL_NAME,
                             description="A tool of this agent run on a confident match (its parameters must "
                             "accept no arguments)")



class AgentConfig(BaseModel):
    """One immutable agent version."""

    model_config = ConfigDict(extra="ignore")
    id: str
    tenant_id: str
    version: int = 1
    name: str = "agent"
    system_prompt: str = "You are a helpful phone assistant. Answer in one or two short sentences."
    first_message: str | None = "Hello! How can I help you today?"
    language: str = "en"
    llm: LlmSettings = Field(default_factory=LlmSettings)
    voice: str | None = None
    stt: SttSettings = Field(default_factory=SttSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    tools: list[ToolSpec] = Field(default_factory=list, max_length=32)
    mcp_servers: list[McpServerSpec] = Field(
        default_factory=list, max_length=8, description="MCP servers whose allow-listed tools the agent can call"
    )
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    knowledge_base_ids: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default_factory=list, max_length=8,
        description="The tenant's knowledge bases retrieved from on every turn (control-api checks they exist)",
    )
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    intents: list[Intent] = Field(default_factory=list, max_length=32,
                                  description="Frequent questions with cached answers (voice_brain.intents)")
    intent_threshold: float = Field(
        0.6, ge=0.05, le=1.0,
        description="Confidence (cosine of the closest example; word overlap without the model) a match needs",
    )
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    sentiment_alert_threshold: float = Field(
        -0.5, ge=-1.0, le=1.0,
        description="sentiment.alert when the call's rolling caller sentiment (VADER compound) falls to or below this",
    )
    is_active: bool = True

    @field_validator("tools", mode="before")
    @classmethod
    def _legacy_tool_ids(cls, v: Any) -> Any:
        """Versions stored before tools existed hold bare tool ids that never named anything: dropped."""
        return [t for t in v if not isinstance(t, str)] if isinstance(v, list) else v

    def tool(self, name: str) -> EndCallTool | TransferCallTool | HttpTool | SendDtmfTool | HoldTool | None:
        return next((t for t in self.tools if t.name == name), None)

    def greeting(self) -> str | None:
        """What the agent says first: the recording notice (when recording with one), then ``first_message``."""
        notice = self.recording.notice.strip() if self.recording.enabled and self.recording.notice else ""
        parts = [p for p in (notice, (self.first_message or "").strip()) if p]
        return " ".join(parts) or None


class NumberRoute(BaseModel):
    """A phone number routed to an agent (KV ``numbers``)."""

    number: str
    tenant_id: str
    agent_id: str


# a group with a quantifier inside that is itself repeated: (a+)+, (\d{1,3})+ ... (ingress never runs one)
NESTED_REPETITION = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")


class TrunkNumberRule(BaseModel):
    """Turns a Request-URI user (national number, extension) into an E.164 number."""

    match: str = Field(max_length=200, description="Python regex, full match on the Request-URI user part")
    replace: str = Field(max_length=100, description="re template (\\1 ...) giving the E.164 number, e.g. '+1\\1'")

    @field_validator("match")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        if NESTED_REPETITION.search(v):
            raise ValueError("a repeated group with a quantifier inside ((a+)+, (\\d{1,3})*) could backtrack for "
                             "minutes on a short input: write it without the nesting")
        return v


DigestAlgorithm = Literal["SHA-256", "MD5"]
DIGEST_ALGORITHMS: tuple[DigestAlgorithm, ...] = ("SHA-256", "MD5")


class SipTrunk(BaseModel):
    """A tenant's SIP trunk (KV ``trunks``, key ``t.<id>``). Passwords are tenant secret names, never values."""

    model_config = ConfigDict(extra="ignore")
    id: str
    tenant_id: str
    name: str
    inbound_sources: list[str] = Field(
        default_factory=list, description="CIDRs that may send INVITEs for this trunk (empty: any, when auth is set)")
    inbound_username: str | None = Field(None, description="Digest user callers must present (with the password)")
    inbound_password_secret: str | None = Field(None, description="Name of a tenant secret holding the password")
    digest_algorithms: list[DigestAlgorithm] = Field(default_factory=lambda: list(DIGEST_ALGORITHMS))
    number_rules: list[TrunkNumberRule] = Field(default_factory=list)
    outbound_proxy: str | None = Field(None, description="host[:port] where outbound INVITEs go")
    outbound_transport: Literal["udp", "tcp"] = "udp"
    outbound_username: str | None = None
    outbound_password_secret: str | None = Field(None, description="Name of a tenant secret holding the password")
    outbound_caller_id: str | None = Field(None, description="E.164 used as From when the request gives none")
    supports_refer: bool = True


class CallRecord(BaseModel):
    """The routing facts of a live call (KV ``calls``), readable by any replica of any stage."""

    model_config = ConfigDict(extra="ignore")
    call_id: str
    tenant_id: str
    agent_id: str
    agent_version: int
    channel: str = "twilio"
    started_at_ms: float = 0.0
    provider_call_id: str | None = None
    ingress_replica: str | None = None  # the ingress replica holding the caller's connection (KV ``replicas``)
    direction: Literal["inbound", "outbound"] = "inbound"  # outbound: placed through POST /v1/calls
    greet_on_answer: bool = True  # call.answered says greet (false: the agent waits for the callee)
