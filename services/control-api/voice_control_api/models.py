"""Request and response models of the API: one create / update / public model per resource. The public
models are also the typed rows the stores return; their OpenAPI examples are in ``openapi_examples``.

Request models forbid unknown fields, so ids, tenant, versions and timestamps can never be set
through a body (a client that sends them gets a 422 naming the field instead of a silent ignore).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    create_model,
)
from pydantic.fields import FieldInfo
from voice_schemas import chat, webrtc
from voice_schemas.agent import (
    EndCallTool,
    HoldTool,
    HttpTool,
    KnowledgeSettings,
    LlmSettings,
    McpAllowedTool,
    McpServerSpec,
    OutboundSettings,
    RecordingSettings,
    SendDtmfTool,
    SttSettings,
    ToolSpec,
    TransferCallTool,
    TransferTarget,
    TurnSettings,
)
from voice_schemas.streams import WEBHOOK_EVENT_TYPES

from . import openapi_examples as ex
from .fields import (
    E164,
    Description,
    Email,
    HttpUrl,
    Id,
    Language,
    LongText,
    Name,
    Password,
    ShortText,
    UtcDatetime,
    clean_text,
)
from .models_analytics import CallAnalytics
from .models_intents import IntentConfig, TurnIntentOut
from .models_knowledge import TurnSource
from .openapi_examples import examples
from .security import Role

T = TypeVar("T")


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _optional(info: FieldInfo) -> tuple[Any, Any]:
    """The field as a patch field: same type and constraints, or None; unset by default."""
    inner = [*info.metadata, *([Field(examples=info.examples)] if info.examples else [])]
    annotation: Any = Annotated[(info.annotation, *inner)] if inner else info.annotation
    return annotation | None, Field(None, description=info.description)


def patch_of(model: type[BaseModel], **nested: type[BaseModel]) -> type[RequestModel]:
    """``<Model>Patch``: the fields of ``model``, each optional, unset by default, and otherwise as ``model``
    declares them; ``nested`` names the patch model of each nested model field."""
    fields: dict[str, Any] = {
        name: (nested[name] | None, None) if name in nested else _optional(info)
        for name, info in model.model_fields.items()
    }
    return create_model(
        model.__name__.removesuffix("Config") + "Patch", __base__=RequestModel, __module__=__name__, **fields
    )


class Page(BaseModel, Generic[T]):
    """One page of a list. Ask for the next with ``offset = offset + limit`` while ``has_more``."""

    items: list[T]
    limit: int
    offset: int
    has_more: bool


VERSION_FIELD_DESCRIPTION = (
    "Optimistic concurrency: the version you last read. The update is refused with 409 when the "
    "resource has changed since (the If-Match header does the same with 412)."
)


# ------------------------------------------------------------------ auth
class LoginRequest(RequestModel):
    model_config = examples(ex.LOGIN_REQUEST)
    email: Email
    password: str = Field(min_length=1, max_length=256)


class TokenPair(BaseModel):
    model_config = examples(ex.TOKEN_PAIR)
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


class RefreshRequest(RequestModel):
    model_config = examples(ex.REFRESH_REQUEST)
    refresh_token: str = Field(min_length=1, max_length=200)


class PasswordChange(RequestModel):
    model_config = examples(ex.PASSWORD_CHANGE)
    current_password: str = Field(min_length=1, max_length=256)
    new_password: Password


class Me(BaseModel):
    """Who the credential on this request is."""

    model_config = examples(ex.ME)

    tenant_id: str
    role: Role
    actor_type: Literal["api_key", "user"]
    actor_id: str
    user_id: str | None
    platform_admin: bool


# ------------------------------------------------------------------ tenants
class TenantCreate(RequestModel):
    model_config = examples(ex.TENANT_CREATE)
    name: Name


class TenantUpdate(RequestModel):
    model_config = examples(ex.TENANT_UPDATE)
    name: Name | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class Tenant(BaseModel):
    model_config = examples(ex.TENANT)
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    version: int


class TenantCreated(Tenant):
    model_config = examples(ex.TENANT_CREATED)
    admin_api_key: str = Field(description="The tenant's first admin API key. Shown once: store it now.")
    admin_api_key_id: str


TRANSFER_PATTERN_DOC = (
    "An exact E.164 number (`+14155550100`), an E.164 prefix ending in `*` (`+4930*`: every number starting "
    "with +4930), or an exact SIP URI (`sip:desk@pbx.example.com`)"
)


class TransferAllowList(BaseModel):
    """Where the tenant's live calls may be transferred (API transfers and agents' `transfer_call` tools);
    empty: nowhere. Against toll fraud: only its admins change it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"patterns": ["+4930*", "+14155550100"]}]})
    patterns: list[str] = Field(description=TRANSFER_PATTERN_DOC + ", normalised")


class TransferAllowListUpdate(RequestModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"patterns": ["+49 30*", "sip:desk@pbx.example.com"]}]}
    )
    patterns: list[Annotated[str, Field(min_length=1, max_length=256), AfterValidator(clean_text)]] = Field(
        max_length=200, description=TRANSFER_PATTERN_DOC + "; the whole list is replaced (at most 200)"
    )


# ------------------------------------------------------------------ users
class UserCreate(RequestModel):
    model_config = examples(ex.USER_CREATE)
    email: Email
    name: Name | None = None
    role: Role = "supervisor"
    password: Password


class UserUpdate(RequestModel):
    model_config = examples(ex.USER_UPDATE)
    name: Name | None = None
    role: Role | None = None
    is_active: bool | None = None
    password: Password | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class User(BaseModel):
    model_config = examples(ex.USER)
    id: str
    tenant_id: str
    email: str
    name: str | None
    role: Role
    is_active: bool
    created_at: datetime
    updated_at: datetime
    version: int


# ------------------------------------------------------------------ API keys
class ApiKeyCreate(RequestModel):
    model_config = examples(ex.API_KEY_CREATE)
    name: Name
    role: Role = "admin"
    user_id: Id | None = Field(None, description="Required for a supervisor key: the supervisor user the key acts as")
    platform_admin: bool = Field(False, description="Can manage tenants (only a platform admin may grant it)")
    expires_at: UtcDatetime | None = Field(None, description="When the key stops working (UTC when no offset)")


class ApiKey(BaseModel):
    model_config = examples(ex.API_KEY)
    id: str
    tenant_id: str
    name: str
    prefix: str = Field(description="Visible start of the key, to recognise it")
    role: Role
    user_id: str | None
    platform_admin: bool
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    model_config = examples(ex.API_KEY_CREATED)
    key: str = Field(description="The secret. Shown once: store it now.")


# ------------------------------------------------------------------ agents
class LlmConfig(LlmSettings):
    model_config = ConfigDict(extra="forbid")
    base_url: HttpUrl | None = Field(None, description="OpenAI-compatible endpoint; the platform default when unset")
    model: ShortText | None = Field(None, description="Model name; the platform default when unset")


class SttConfig(SttSettings):
    model_config = ConfigDict(extra="forbid")
    model: ShortText | None = None
    language: Language | None = "en"


class TurnConfig(TurnSettings):
    model_config = ConfigDict(extra="forbid")


class RecordingConfig(RecordingSettings):
    model_config = ConfigDict(extra="forbid")
    notice: LongText | None = Field(
        None, max_length=500,
        description="Spoken before the greeting of every recorded call (e.g. 'This call is recorded.')",
    )


class KnowledgeConfig(KnowledgeSettings):
    model_config = ConfigDict(extra="forbid")


class OutboundConfig(OutboundSettings):
    model_config = ConfigDict(extra="forbid")


# Tools: the schema's models with unknown fields refused. What a shape cannot check (unique names, placeholders,
# secrets, the egress guard, the transfer allow-list) is checked when a version is saved: usecases.agent_tools.
class EndCallToolConfig(EndCallTool):
    model_config = ConfigDict(extra="forbid")


class TransferTargetConfig(TransferTarget):
    model_config = ConfigDict(extra="forbid")


class TransferCallToolConfig(TransferCallTool):
    model_config = ConfigDict(extra="forbid")
    destinations: list[TransferTargetConfig] = Field(min_length=1, max_length=20)  # type: ignore[assignment]


class HttpToolConfig(HttpTool):
    model_config = ConfigDict(extra="forbid")


class SendDtmfToolConfig(SendDtmfTool):
    model_config = ConfigDict(extra="forbid")


class HoldToolConfig(HoldTool):
    model_config = ConfigDict(extra="forbid")


ToolConfig = Annotated[
    EndCallToolConfig | TransferCallToolConfig | HttpToolConfig | SendDtmfToolConfig | HoldToolConfig,
    Field(discriminator="type"),
]
MAX_TOOLS = 32


# MCP servers (their tools offered as <server>__<tool>): what a shape cannot check is usecases.agent_mcp
class McpAllowedToolConfig(McpAllowedTool):
    model_config = ConfigDict(extra="forbid")


class McpServerConfig(McpServerSpec):
    model_config = ConfigDict(extra="forbid")
    allowed_tools: list[McpAllowedToolConfig] = Field(  # type: ignore[assignment]
        min_length=1, max_length=32,
        description="The only tools of the server the model is offered (required; a bare name or an object with "
        "the tool's timeout_s, approval and filler): the server's other tools, and ones it adds later, are never "
        "offered or run",
    )


def _stored_tools(value: Any) -> Any:
    """Versions stored before tools existed hold bare tool ids that never named anything: dropped."""
    return [t for t in value if not isinstance(t, str)] if isinstance(value, list) else value


class AgentFields(RequestModel):
    """What an agent version is made of (the body of create and full replace)."""

    model_config = examples(ex.AGENT_FIELDS)
    name: Name = "agent"
    system_prompt: LongText = "You are a helpful phone assistant. Answer in one or two short sentences."
    first_message: LongText | None = "Hello! How can I help you today?"
    language: Language = "en"
    llm: LlmConfig = Field(default_factory=LlmConfig)
    voice: ShortText | None = None
    stt: SttConfig = Field(default_factory=SttConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)
    tools: list[ToolConfig] = Field(
        default_factory=list,
        max_length=MAX_TOOLS,
        description="What the agent can do besides talking (end_call, transfer_call, send_dtmf, hold, http). A "
        "PATCH replaces the "
        "whole list. Names are unique; an HTTP tool's host must not be internal, its {param} placeholders must be "
        "properties of its parameters and each {{secret:NAME}} must name a secret of this tenant; transfer "
        "targets must be on the tenant's transfer allow-list.",
    )
    mcp_servers: list[McpServerConfig] = Field(
        default_factory=list,
        max_length=8,
        description="MCP servers (streamable HTTP) whose allow-listed tools the agent can call, offered to the model "
        "as <server>__<tool> with the server's input schema. A PATCH replaces the whole list. The URL's host must "
        "not be internal; header values may hold {{secret:NAME}} (a secret of this tenant).",
    )
    recording: RecordingConfig = Field(
        default_factory=RecordingConfig, description="Call recording (off by default) and its spoken notice"
    )
    knowledge_base_ids: list[Id] = Field(
        default_factory=list,
        max_length=8,
        description="Knowledge bases of this tenant the agent retrieves from on every turn (a PATCH replaces the "
        "list); each must exist in the tenant",
    )
    knowledge: KnowledgeConfig = Field(
        default_factory=KnowledgeConfig, description="How much retrieved knowledge goes into a turn's prompt"
    )
    outbound: OutboundConfig = Field(
        default_factory=OutboundConfig,
        description="Outbound calls (POST /v1/calls): who speaks first, and the answering-machine check",
    )
    intents: list[IntentConfig] = Field(
        default_factory=list,
        max_length=32,
        description="Frequent questions: example phrases, and a fixed answer spoken without the LLM and/or a tool "
        "(end_call, or an HTTP tool without required arguments) run at once on a confident match; otherwise the LLM "
        "gets the intent as a hint. A PATCH replaces the whole list. Counts: GET /v1/agents/{id}/intents/stats",
    )
    intent_threshold: float = Field(
        0.6, ge=0.05, le=1.0,
        description="Confidence a match needs (cosine of the closest example; word overlap without the model)",
    )
    sentiment_alert_threshold: float = Field(
        -0.5,
        ge=-1.0,
        le=1.0,
        description="sentiment.alert when the call's rolling caller sentiment (VADER compound) falls to or below this",
    )
    is_active: bool = True


class AgentCreate(AgentFields):
    owner_user_id: Id | None = Field(
        None, description="Supervisor who owns the agent (admins only; a supervisor's agents are their own)"
    )


class AgentReplace(AgentCreate):
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


# Patches: every field of the model they change, optional (unset = unchanged), with its type, bounds and
# description taken from that model, so the bounds in voice_schemas.agent are declared once.
LlmPatch = patch_of(LlmConfig)
SttPatch = patch_of(SttConfig)
TurnPatch = patch_of(TurnConfig)
RecordingPatch = patch_of(RecordingConfig)
KnowledgePatch = patch_of(KnowledgeConfig)
OutboundPatch = patch_of(OutboundConfig)


class AgentPatch(
    patch_of(  # type: ignore[misc]
        AgentCreate, llm=LlmPatch, stt=SttPatch, turn=TurnPatch, recording=RecordingPatch, knowledge=KnowledgePatch,
        outbound=OutboundPatch,
    )
):
    """Fields to change; nested objects are merged. Every accepted update creates a new version."""

    model_config = examples(ex.AGENT_PATCH)
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class Agent(AgentFields):
    """The current version of an agent."""

    model_config = ConfigDict(extra="ignore", **examples(ex.AGENT))
    tools: Annotated[list[ToolSpec], BeforeValidator(_stored_tools)] = Field(  # type: ignore[assignment]
        default_factory=list, description="The tools as stored (a header's {{secret:NAME}} is only the reference)"
    )
    mcp_servers: list[McpServerSpec] = Field(  # type: ignore[assignment]
        default_factory=list, description="The MCP servers as stored (a header's {{secret:NAME}} is only the reference)"
    )
    id: str
    tenant_id: str
    version: int = Field(description="Current version; every update adds one")
    owner_user_id: str | None
    created_at: datetime
    updated_at: datetime


class AgentVersion(AgentFields):
    """One immutable version of an agent."""

    model_config = ConfigDict(extra="ignore", **examples(ex.AGENT_VERSION))
    tools: Annotated[list[ToolSpec], BeforeValidator(_stored_tools)] = Field(  # type: ignore[assignment]
        default_factory=list, description="The version's tools as stored"
    )
    mcp_servers: list[McpServerSpec] = Field(  # type: ignore[assignment]
        default_factory=list, description="The version's MCP servers as stored"
    )
    agent_id: str
    version: int
    created_at: datetime
    created_by: str | None


class AgentDeployment(BaseModel):
    """What the data plane reads for this agent from JetStream KV, next to what PostgreSQL holds."""

    model_config = examples(ex.AGENT_DEPLOYMENT)
    agent_id: str
    version: int = Field(description="Current version in PostgreSQL")
    kv_bucket: str
    kv_key: str
    kv_version: int | None = Field(description="Version under the current key in KV; null when absent")
    kv_revision: int | None
    in_sync: bool
    config: dict[str, Any] | None = Field(description="The AgentConfig JSON KV holds under kv_key")


# ------------------------------------------------------------------ phone numbers
class PhoneNumberCreate(RequestModel):
    model_config = examples(ex.PHONE_NUMBER_CREATE)
    number: E164
    agent_id: Id


class PhoneNumberUpdate(RequestModel):
    model_config = examples(ex.PHONE_NUMBER_UPDATE)
    number: E164 | None = None
    agent_id: Id | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class PhoneNumber(BaseModel):
    model_config = examples(ex.PHONE_NUMBER)
    id: str
    tenant_id: str
    number: str
    agent_id: str
    created_at: datetime
    updated_at: datetime
    version: int


# ------------------------------------------------------------------ calls
class CallStatus(StrEnum):
    ringing = "ringing"
    in_progress = "in_progress"
    ended = "ended"


class Turn(BaseModel):
    model_config = examples(ex.TURN)
    turn_id: str
    speaker: Literal["caller", "agent"]
    text: str
    started_at: datetime | None
    ended_at: datetime | None
    interrupted: bool
    latency_ms: float | None = Field(
        description="Voice-to-voice milliseconds of the turn: end of caller speech to first agent audio"
    )
    latency: dict[str, float] | None = Field(description="Per-stage breakdown in milliseconds")
    sources: list[TurnSource] = Field(
        default_factory=list, description="Agent turns: the knowledge chunks retrieved into the reply's prompt"
    )
    intent: TurnIntentOut | None = Field(
        None, description="Caller turns: the intent the words matched (null: none at the agent's threshold)"
    )


class Call(BaseModel):
    model_config = examples(ex.CALL)
    id: str
    tenant_id: str
    agent_id: str
    agent_version: int = Field(description="The agent version the call ran")
    channel: str
    from_number: str | None
    to_number: str | None
    status: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    duration_s: float | None


class Recording(BaseModel):
    """A call's recording: stereo 16 kHz PCM16 WAV, the caller left, the agent (as the caller heard it) right."""

    model_config = examples(ex.RECORDING)
    status: Literal["recording", "ready", "failed"] = Field(
        description="`recording` while the call is live or being stored; `ready` to download"
    )
    duration_s: float | None
    size_bytes: int | None
    created_at: datetime
    expires_at: datetime | None = Field(description="When the agent's retention deletes it")
    url: str = Field(description="Download path (`GET`, with the same credentials); `audio/wav`")


class CallDetail(Call):
    model_config = examples(ex.CALL_DETAIL)
    turns: list[Turn]
    recording: Recording | None = Field(None, description="The call's recording; null when it was not recorded")
    analytics: CallAnalytics | None = Field(
        None, description="Summary, disposition, tags, KPIs and estimated cost; null until analytics has summarised "
        "the ended call"
    )


# ------------------------------------------------------------------ webhooks
# the event types analytics delivers to webhooks (voice_schemas.streams.WEBHOOK_EVENT_TYPES), or '*' for all of them
WEBHOOK_EVENTS: tuple[str, ...] = ("*", *sorted(t.TYPE for t in WEBHOOK_EVENT_TYPES))
WEBHOOK_SECRET_BYTES = (24, 64)


def _check_webhook_secret(value: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24-64 random bytes."""
    raw = b""
    if value.startswith("whsec_"):
        try:
            raw = base64.b64decode(value[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
    if not WEBHOOK_SECRET_BYTES[0] <= len(raw) <= WEBHOOK_SECRET_BYTES[1]:
        raise ValueError("must be whsec_ followed by the base64 of 24 to 64 random bytes (Standard Webhooks)")
    return value


def _check_event(value: str) -> str:
    if value not in WEBHOOK_EVENTS:
        raise ValueError("not an event type; '*' subscribes to all")
    return value


WebhookEvent = Annotated[
    str,
    AfterValidator(_check_event),
    WithJsonSchema({"type": "string", "enum": list(WEBHOOK_EVENTS), "description": "An event type, or '*'"}),
]


class WebhookCreate(RequestModel):
    model_config = examples(ex.WEBHOOK_CREATE)
    url: HttpUrl
    events: list[WebhookEvent] = Field(min_length=1, max_length=64)
    description: Description | None = None
    is_active: bool = True
    secret: Annotated[str, AfterValidator(_check_webhook_secret)] | None = Field(
        None,
        max_length=100,
        description="Signing secret: whsec_ + base64 of 24-64 random bytes (Standard Webhooks); generated when "
        "omitted",
    )


class WebhookUpdate(RequestModel):
    model_config = examples(ex.WEBHOOK_UPDATE)
    url: HttpUrl | None = None
    events: list[WebhookEvent] | None = Field(None, min_length=1, max_length=64)
    description: Description | None = None
    is_active: bool | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class Webhook(BaseModel):
    model_config = examples(ex.WEBHOOK)
    id: str
    tenant_id: str
    url: str
    events: list[str]
    description: str | None
    is_active: bool
    disabled_reason: str | None = Field(None, description="Why deliveries stopped (e.g. the receiver answered 410)")
    created_at: datetime
    updated_at: datetime
    version: int


class WebhookWithSecret(Webhook):
    model_config = examples(ex.WEBHOOK_WITH_SECRET)
    secret: str = Field(
        description="Standard Webhooks signing secret (whsec_ + base64 key) of deliveries. Shown on create and rotate "
        "only; stored sealed."
    )


class WebhookAttempt(BaseModel):
    at: datetime
    status: int | None = Field(description="HTTP status the receiver answered; null when there was no answer")
    error: str | None = Field(description="Why the attempt failed (never the response body)")
    duration_ms: float
    retry_after_s: float | None = Field(description="Retry-After the receiver asked for (429/5xx)")


class WebhookDelivery(BaseModel):
    model_config = examples(ex.WEBHOOK_DELIVERY)
    id: str = Field(description="The message id: the webhook-id header, the same on every attempt")
    webhook_id: str
    event_id: str
    event_type: str
    call_id: str | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="Attempts made in all (a redelivery adds a round)")
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    attempt_log: list[WebhookAttempt] = Field(description="The latest attempts, oldest first (at most 20)")


# ------------------------------------------------------------------ tenant secrets
SECRET_VALUE_MAX_BYTES = 8192  # sealed, it must fit the KV bucket's value limit (16 KiB)


def _check_secret_value(value: SecretStr) -> SecretStr:
    raw = clean_text(value.get_secret_value())
    if not raw:
        raise ValueError("must not be empty")
    if len(raw.encode("utf-8")) > SECRET_VALUE_MAX_BYTES:
        raise ValueError(f"must be at most {SECRET_VALUE_MAX_BYTES} bytes (UTF-8)")
    return value


class SecretPut(RequestModel):
    model_config = ConfigDict(hide_input_in_errors=True, **examples(ex.SECRET_PUT))
    value: Annotated[SecretStr, AfterValidator(_check_secret_value)] = Field(
        description=f"The secret (e.g. an API key), 1 to {SECRET_VALUE_MAX_BYTES} bytes. Stored sealed; never "
        "returned.",
        json_schema_extra={"minLength": 1, "maxLength": SECRET_VALUE_MAX_BYTES},
    )


class TenantSecret(BaseModel):
    """A tenant secret's name and times; its value is never returned."""

    model_config = examples(ex.TENANT_SECRET)
    tenant_id: str
    name: str
    created_at: datetime
    updated_at: datetime


# ------------------------------------------------------------------ audit
class AuditEntry(BaseModel):
    model_config = examples(ex.AUDIT_ENTRY)
    id: int
    at: datetime
    actor_type: str
    actor_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    request_id: str | None
    details: dict[str, Any]


# ------------------------------------------------------------------ text chats
def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


class ChatCreated(BaseModel):
    call_id: str = Field(description="The chat's call id (it shows in the calls API with channel `chat`)")
    greeting: str | None = Field(description="The agent's first message, or null when it has none")


ChatText = Annotated[
    str,
    Field(min_length=1, max_length=chat.MAX_MESSAGE_CHARS),
    AfterValidator(clean_text),
    AfterValidator(_not_blank),
]


class ChatMessage(RequestModel):
    text: ChatText = Field(description=f"What the user says (at most {chat.MAX_MESSAGE_CHARS} characters)")


class ChatReply(BaseModel):
    reply: str = Field(description="The agent's reply")
    turn: int = Field(description="The number of this message in the chat (1 for the first)")
    ended: bool = Field(False, description="The agent ended the chat with this reply")


# ------------------------------------------------------------------ browser calls (WebRTC)
class WebCallOffer(RequestModel):
    type: Literal["offer"] = Field(description="Always `offer`")
    sdp: str = Field(
        min_length=1,
        max_length=webrtc.MAX_SDP_CHARS,
        description="The browser's SDP offer with its ICE candidates gathered (no trickle): one audio section, Opus",
    )


class WebCallAnswer(BaseModel):
    call_id: str = Field(description="The call's id (it shows in the calls API with channel `webrtc`)")
    type: Literal["answer"] = "answer"
    sdp: str = Field(description="The SDP answer, with every candidate of the server's side in it")
