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


ToolSpec = Annotated[EndCallTool | TransferCallTool | HttpTool, Field(discriminator="type")]


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
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    knowledge_base_ids: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default_factory=list, max_length=8,
        description="The tenant's knowledge bases retrieved from on every turn (control-api checks they exist)",
    )
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
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

    def tool(self, name: str) -> EndCallTool | TransferCallTool | HttpTool | None:
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
