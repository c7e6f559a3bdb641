"""Request and response models of the API: one create / update / public model per resource.

Request models forbid unknown fields, so ids, tenant, versions and timestamps can never be set
through a body (a client that sends them gets a 422 naming the field instead of a silent ignore).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from voice_schemas import REGISTRY
from voice_schemas.agent import LlmSettings, SttSettings, TurnSettings

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
)
from .security import Role

T = TypeVar("T")

# ids and times used in the OpenAPI examples
_TENANT = "7c9e6679742540de944be07fc1f90ae7"
_AGENT = "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4"
_USER = "5d0e8a1f0b2c4e6f8a9b1c2d3e4f5a6b"
_KEY = "b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1"
_AT = "2025-01-01T10:00:00Z"
_AGENT_FIELDS: dict[str, Any] = {
    "name": "Front desk",
    "system_prompt": "You are the front desk of Acme Dental. Book, move or cancel appointments.",
    "first_message": "Hi, Acme Dental, how can I help?",
    "language": "en",
    "llm": {"base_url": None, "model": "smollm2", "temperature": 0.5, "max_tokens": 160},
    "voice": "en_US-amy-medium",
    "stt": {"model": "tiny.en", "language": "en"},
    "turn": {"end_of_turn_ms": 600, "interruptible": True, "min_barge_in_ms": 400, "min_turn_silence_ms": 200},
    "tools": [],
    "is_active": True,
}


def _examples(*items: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(items)})


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "ops@example.com", "password": "correct horse battery staple"}]}
    )
    email: Email
    password: str = Field(min_length=1, max_length=256)


class TokenPair(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...",
                    "refresh_token": "vr_5Kq...",
                    "token_type": "bearer",
                    "expires_in": 900,
                }
            ]
        }
    )
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


class RefreshRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "vr_5KqR..."}]})
    refresh_token: str = Field(min_length=1, max_length=200)


class PasswordChange(RequestModel):
    model_config = _examples({"current_password": "old secret phrase", "new_password": "correct horse battery staple"})
    current_password: str = Field(min_length=1, max_length=256)
    new_password: Password


class Me(BaseModel):
    """Who the credential on this request is."""

    model_config = _examples(
        {
            "tenant_id": _TENANT,
            "role": "admin",
            "actor_type": "api_key",
            "actor_id": _KEY,
            "user_id": None,
            "platform_admin": False,
        }
    )

    tenant_id: str
    role: Role
    actor_type: Literal["api_key", "user"]
    actor_id: str
    user_id: str | None
    platform_admin: bool


# ------------------------------------------------------------------ tenants
class TenantCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Acme Dental"}]})
    name: Name


class TenantUpdate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Acme Dental Group", "version": 1}]})
    name: Name | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class Tenant(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "7c9e6679742540de944be07fc1f90ae7",
                    "name": "Acme Dental",
                    "created_at": "2025-01-01T10:00:00Z",
                    "updated_at": "2025-01-01T10:00:00Z",
                    "version": 1,
                }
            ]
        }
    )
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    version: int


class TenantCreated(Tenant):
    model_config = _examples(
        {
            "id": _TENANT,
            "name": "Acme Dental",
            "created_at": _AT,
            "updated_at": _AT,
            "version": 1,
            "admin_api_key": "vk_p0q9r8s7_Xy2...kept-secret...",
            "admin_api_key_id": _KEY,
        }
    )
    admin_api_key: str = Field(description="The tenant's first admin API key. Shown once: store it now.")
    admin_api_key_id: str


# ------------------------------------------------------------------ users
class UserCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "sam@example.com",
                    "name": "Sam",
                    "role": "supervisor",
                    "password": "correct horse battery staple",
                }
            ]
        }
    )
    email: Email
    name: Name | None = None
    role: Role = "supervisor"
    password: Password


class UserUpdate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "admin", "version": 1}]})
    name: Name | None = None
    role: Role | None = None
    is_active: bool | None = None
    password: Password | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class User(BaseModel):
    model_config = _examples(
        {
            "id": _USER,
            "tenant_id": _TENANT,
            "email": "sam@example.com",
            "name": "Sam",
            "role": "supervisor",
            "is_active": True,
            "created_at": _AT,
            "updated_at": _AT,
            "version": 1,
        }
    )
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
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "ci deploy", "role": "admin"}]})
    name: Name
    role: Role = "admin"
    user_id: Id | None = Field(None, description="Required for a supervisor key: the supervisor user the key acts as")
    platform_admin: bool = Field(False, description="Can manage tenants (only a platform admin may grant it)")
    expires_at: UtcDatetime | None = Field(None, description="When the key stops working (UTC when no offset)")


class ApiKey(BaseModel):
    model_config = _examples(
        {
            "id": _KEY,
            "tenant_id": _TENANT,
            "name": "ci deploy",
            "prefix": "vk_k3j9x2m1",
            "role": "admin",
            "user_id": None,
            "platform_admin": False,
            "created_by": "api_key:" + _KEY,
            "created_at": _AT,
            "expires_at": None,
            "last_used_at": _AT,
            "revoked_at": None,
        }
    )
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
    model_config = _examples(
        {
            "id": _KEY,
            "tenant_id": _TENANT,
            "name": "ci deploy",
            "prefix": "vk_k3j9x2m1",
            "role": "admin",
            "user_id": None,
            "platform_admin": False,
            "created_by": "api_key:" + _KEY,
            "created_at": _AT,
            "expires_at": None,
            "last_used_at": None,
            "revoked_at": None,
            "key": "vk_k3j9x2m1_Zb3...kept-secret...",
        }
    )
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


class AgentFields(RequestModel):
    """What an agent version is made of (the body of create and full replace)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Front desk",
                    "system_prompt": "You are the front desk of Acme Dental. Book, move or cancel appointments.",
                    "first_message": "Hi, Acme Dental, how can I help?",
                    "language": "en",
                    "llm": {"model": "smollm2", "temperature": 0.5, "max_tokens": 160},
                    "voice": "en_US-amy-medium",
                    "stt": {"model": "tiny.en", "language": "en"},
                    "turn": {"end_of_turn_ms": 600, "interruptible": True, "min_barge_in_ms": 400},
                    "tools": [],
                    "is_active": True,
                }
            ]
        }
    )
    name: Name = "agent"
    system_prompt: LongText = "You are a helpful phone assistant. Answer in one or two short sentences."
    first_message: LongText | None = "Hello! How can I help you today?"
    language: Language = "en"
    llm: LlmConfig = Field(default_factory=LlmConfig)
    voice: ShortText | None = None
    stt: SttConfig = Field(default_factory=SttConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)
    tools: list[Id] = Field(default_factory=list, max_length=64, description="Tool ids (see the tools API)")
    is_active: bool = True


class AgentCreate(AgentFields):
    owner_user_id: Id | None = Field(
        None, description="Supervisor who owns the agent (admins only; a supervisor's agents are their own)"
    )


class AgentReplace(AgentCreate):
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class LlmPatch(RequestModel):
    base_url: HttpUrl | None = None
    model: ShortText | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)


class SttPatch(RequestModel):
    model: ShortText | None = None
    language: Language | None = None


class TurnPatch(RequestModel):
    end_of_turn_ms: int | None = Field(None, ge=100, le=5000)
    interruptible: bool | None = None
    min_barge_in_ms: int | None = Field(None, ge=60, le=3000)
    min_turn_silence_ms: int | None = Field(None, ge=60, le=2000)


class AgentPatch(RequestModel):
    """Fields to change; nested objects are merged. Every accepted update creates a new version."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"first_message": "Hi, Acme Dental!", "llm": {"temperature": 0.3}, "version": 1}]
        }
    )
    name: Name | None = None
    system_prompt: LongText | None = None
    first_message: LongText | None = None
    language: Language | None = None
    llm: LlmPatch | None = None
    voice: ShortText | None = None
    stt: SttPatch | None = None
    turn: TurnPatch | None = None
    tools: list[Id] | None = Field(None, max_length=64)
    is_active: bool | None = None
    owner_user_id: Id | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class Agent(AgentFields):
    """The current version of an agent."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": _AGENT,
                    "tenant_id": _TENANT,
                    "version": 3,
                    "owner_user_id": None,
                    "created_at": _AT,
                    "updated_at": _AT,
                    **_AGENT_FIELDS,
                }
            ]
        },
    )
    id: str
    tenant_id: str
    version: int = Field(description="Current version; every update adds one")
    owner_user_id: str | None
    created_at: datetime
    updated_at: datetime


class AgentVersion(AgentFields):
    """One immutable version of an agent."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"agent_id": _AGENT, "version": 2, "created_at": _AT, "created_by": "api_key:" + _KEY, **_AGENT_FIELDS}
            ]
        },
    )
    agent_id: str
    version: int
    created_at: datetime
    created_by: str | None


class AgentDeployment(BaseModel):
    """What the data plane reads for this agent from JetStream KV, next to what PostgreSQL holds."""

    model_config = _examples(
        {
            "agent_id": _AGENT,
            "version": 3,
            "kv_bucket": "agents",
            "kv_key": "a." + _AGENT,
            "kv_version": 3,
            "kv_revision": 118,
            "in_sync": True,
            "config": {"id": _AGENT, "tenant_id": _TENANT, "version": 3, **_AGENT_FIELDS},
        }
    )
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
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"number": "+14155550100", "agent_id": "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4"}]}
    )
    number: E164
    agent_id: Id


class PhoneNumberUpdate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"agent_id": "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4", "version": 1}]}
    )
    number: E164 | None = None
    agent_id: Id | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class PhoneNumber(BaseModel):
    model_config = _examples(
        {
            "id": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
            "tenant_id": _TENANT,
            "number": "+14155550100",
            "agent_id": _AGENT,
            "created_at": _AT,
            "updated_at": _AT,
            "version": 1,
        }
    )
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "turn_id": "t1",
                    "speaker": "agent",
                    "text": "Sure, what day suits you?",
                    "started_at": "2025-01-01T10:00:04.100Z",
                    "ended_at": "2025-01-01T10:00:05.900Z",
                    "interrupted": False,
                    "latency_ms": 812.0,
                    "latency": {
                        "end_of_turn_ms": 240.0,
                        "stt_ms": 180.0,
                        "llm_first_sentence_ms": 310.0,
                        "tts_first_audio_ms": 62.0,
                        "voice_to_voice_ms": 812.0,
                    },
                }
            ]
        }
    )
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


_CALL: dict[str, Any] = {
    "id": "CA5c1b9e0d7a3f4e2b8c6d4a2f0e1b3c5d",
    "tenant_id": _TENANT,
    "agent_id": _AGENT,
    "agent_version": 3,
    "channel": "twilio",
    "from_number": "+14155550199",
    "to_number": "+14155550100",
    "status": "ended",
    "started_at": _AT,
    "answered_at": "2025-01-01T10:00:01Z",
    "ended_at": "2025-01-01T10:02:13Z",
    "end_reason": "caller_hangup",
    "duration_s": 133.0,
}


class Call(BaseModel):
    model_config = _examples(_CALL)
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


class CallDetail(Call):
    model_config = _examples(
        {
            **_CALL,
            "turns": [
                {
                    "turn_id": "t0",
                    "speaker": "agent",
                    "text": "Hi, Acme Dental, how can I help?",
                    "started_at": "2025-01-01T10:00:01.200Z",
                    "ended_at": "2025-01-01T10:00:03.000Z",
                    "interrupted": False,
                    "latency_ms": None,
                    "latency": {},
                },
                {
                    "turn_id": "t1",
                    "speaker": "caller",
                    "text": "I'd like to move my appointment.",
                    "started_at": "2025-01-01T10:00:03.500Z",
                    "ended_at": "2025-01-01T10:00:05.100Z",
                    "interrupted": False,
                    "latency_ms": None,
                    "latency": None,
                },
                {
                    "turn_id": "t1",
                    "speaker": "agent",
                    "text": "Sure, what day suits you?",
                    "started_at": "2025-01-01T10:00:05.900Z",
                    "ended_at": "2025-01-01T10:00:07.400Z",
                    "interrupted": False,
                    "latency_ms": 812.0,
                    "latency": {
                        "end_of_turn_ms": 240.0,
                        "stt_ms": 180.0,
                        "llm_first_sentence_ms": 310.0,
                        "tts_first_audio_ms": 62.0,
                        "voice_to_voice_ms": 812.0,
                    },
                },
            ],
        }
    )
    turns: list[Turn]


# ------------------------------------------------------------------ webhooks
WEBHOOK_EVENTS: tuple[str, ...] = ("*", *sorted(REGISTRY))


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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/voice",
                    "events": ["call.ended", "analytics.summary"],
                    "description": "CRM sync",
                }
            ]
        }
    )
    url: HttpUrl
    events: list[WebhookEvent] = Field(min_length=1, max_length=64)
    description: Description | None = None
    is_active: bool = True
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Signing secret; generated when omitted",
    )


class WebhookUpdate(RequestModel):
    model_config = _examples({"events": ["call.ended"], "is_active": False, "version": 1})
    url: HttpUrl | None = None
    events: list[WebhookEvent] | None = Field(None, min_length=1, max_length=64)
    description: Description | None = None
    is_active: bool | None = None
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class Webhook(BaseModel):
    model_config = _examples(
        {
            "id": "1f2e3d4c5b6a79881f2e3d4c5b6a7988",
            "tenant_id": _TENANT,
            "url": "https://hooks.example.com/voice",
            "events": ["analytics.summary", "call.ended"],
            "description": "CRM sync",
            "is_active": True,
            "created_at": _AT,
            "updated_at": _AT,
            "version": 1,
        }
    )
    id: str
    tenant_id: str
    url: str
    events: list[str]
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    version: int


class WebhookWithSecret(Webhook):
    model_config = _examples(
        {
            "id": "1f2e3d4c5b6a79881f2e3d4c5b6a7988",
            "tenant_id": _TENANT,
            "url": "https://hooks.example.com/voice",
            "events": ["call.ended"],
            "description": "CRM sync",
            "is_active": True,
            "created_at": _AT,
            "updated_at": _AT,
            "version": 1,
            "secret": "whsec_Qm9...kept-secret...",
        }
    )
    secret: str = Field(description="HMAC signing secret of deliveries. Shown on create and rotate only.")


# ------------------------------------------------------------------ audit
class AuditEntry(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 42,
                    "at": "2025-01-01T10:00:00Z",
                    "actor_type": "api_key",
                    "actor_id": "b2c4...",
                    "action": "agent.update",
                    "resource_type": "agent",
                    "resource_id": "3f1c...",
                    "request_id": "9b1e2c3d4e5f",
                    "details": {"fields": ["system_prompt"], "version": 2},
                }
            ]
        }
    )
    id: int
    at: datetime
    actor_type: str
    actor_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    request_id: str | None
    details: dict[str, Any]
