"""Agent configuration as the data plane reads it from JetStream KV (written by control-api)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    tools: list[str] = Field(default_factory=list)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    sentiment_alert_threshold: float = Field(
        -0.5, ge=-1.0, le=1.0,
        description="sentiment.alert when the call's rolling caller sentiment (VADER compound) falls to or below this",
    )
    is_active: bool = True

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
