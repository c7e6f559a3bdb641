"""Examples shown in the OpenAPI document, one per request and response model (data only)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

Example = dict[str, Any]


def examples(*items: Example) -> ConfigDict:
    """A model config showing ``items`` as the schema's examples."""
    return ConfigDict(json_schema_extra={"examples": list(items)})


# ids and times used below
TENANT_ID = "7c9e6679742540de944be07fc1f90ae7"
AGENT_ID = "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4"
USER_ID = "5d0e8a1f0b2c4e6f8a9b1c2d3e4f5a6b"
KEY_ID = "b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1"
WEBHOOK_ID = "1f2e3d4c5b6a79881f2e3d4c5b6a7988"
AT = "2025-01-01T10:00:00Z"

PROBLEM: Example = {
    "type": "https://voice-platform.dev/problems/not-found",
    "title": "Not Found",
    "status": 404,
    "detail": "agent not found",
    "instance": "/v1/agents/4f7d0c",
    "request_id": "9b1e2c3d4e5f",
}

# ------------------------------------------------------------------ auth
LOGIN_REQUEST: Example = {"email": "ops@example.com", "password": "correct horse battery staple"}
TOKEN_PAIR: Example = {
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...",
    "refresh_token": "vr_5Kq...",
    "token_type": "bearer",
    "expires_in": 900,
}
REFRESH_REQUEST: Example = {"refresh_token": "vr_5KqR..."}
PASSWORD_CHANGE: Example = {"current_password": "old secret phrase", "new_password": "correct horse battery staple"}
ME: Example = {
    "tenant_id": TENANT_ID,
    "role": "admin",
    "actor_type": "api_key",
    "actor_id": KEY_ID,
    "user_id": None,
    "platform_admin": False,
}

# ------------------------------------------------------------------ tenants
TENANT_CREATE: Example = {"name": "Acme Dental"}
TENANT_UPDATE: Example = {"name": "Acme Dental Group", "version": 1}
TENANT: Example = {"id": TENANT_ID, "name": "Acme Dental", "created_at": AT, "updated_at": AT, "version": 1}
TENANT_CREATED: Example = {
    **TENANT,
    "admin_api_key": "vk_p0q9r8s7_Xy2...kept-secret...",
    "admin_api_key_id": KEY_ID,
}

# ------------------------------------------------------------------ users
USER_CREATE: Example = {
    "email": "sam@example.com",
    "name": "Sam",
    "role": "supervisor",
    "password": "correct horse battery staple",
}
USER_UPDATE: Example = {"role": "admin", "version": 1}
USER: Example = {
    "id": USER_ID,
    "tenant_id": TENANT_ID,
    "email": "sam@example.com",
    "name": "Sam",
    "role": "supervisor",
    "is_active": True,
    "created_at": AT,
    "updated_at": AT,
    "version": 1,
}

# ------------------------------------------------------------------ API keys
API_KEY_CREATE: Example = {"name": "ci deploy", "role": "admin"}
API_KEY: Example = {
    "id": KEY_ID,
    "tenant_id": TENANT_ID,
    "name": "ci deploy",
    "prefix": "vk_k3j9x2m1",
    "role": "admin",
    "user_id": None,
    "platform_admin": False,
    "created_by": "api_key:" + KEY_ID,
    "created_at": AT,
    "expires_at": None,
    "last_used_at": AT,
    "revoked_at": None,
}
API_KEY_CREATED: Example = {**API_KEY, "last_used_at": None, "key": "vk_k3j9x2m1_Zb3...kept-secret..."}

# ------------------------------------------------------------------ agents
_TOOLS: list[Example] = [
    {
        "type": "http",
        "name": "find_appointment",
        "description": "Look up the caller's next appointment by their booking reference.",
        "method": "GET",
        "url": "https://api.acme-dental.example/v1/bookings/{reference}",
        "headers": {"Authorization": "Bearer {{secret:booking_api_key}}"},
        "parameters": {
            "type": "object",
            "properties": {"reference": {"type": "string", "pattern": "^[A-Z0-9]{6}$"}},
            "required": ["reference"],
        },
        "timeout_s": 4.0,
        "max_response_bytes": 16384,
        "response_fields": ["booking.starts_at", "booking.dentist"],
        "requires_approval": False,
        "filler": "Let me look that up.",
        "filler_after_ms": 1200,
    },
    {"type": "end_call", "name": "end_call"},
    {
        "type": "transfer_call",
        "name": "transfer_call",
        "description": "Transfer the caller to the front desk or to billing when they ask for a person.",
        "destinations": [
            {"name": "front desk", "target": "+14155550123"},
            {"name": "billing", "target": "sip:billing@pbx.acme-dental.example"},
        ],
    },
]
_AGENT_FIELDS: Example = {
    "name": "Front desk",
    "system_prompt": "You are the front desk of Acme Dental. Book, move or cancel appointments.",
    "first_message": "Hi, Acme Dental, how can I help?",
    "language": "en",
    "llm": {"base_url": None, "model": "smollm2", "temperature": 0.5, "max_tokens": 160},
    "voice": "en_US-amy-medium",
    "stt": {"model": "tiny.en", "language": "en"},
    "turn": {"end_of_turn_ms": 600, "interruptible": True, "min_barge_in_ms": 400, "min_turn_silence_ms": 200},
    "tools": _TOOLS,
    "is_active": True,
}
AGENT_FIELDS: Example = {
    **_AGENT_FIELDS,
    "llm": {"model": "smollm2", "temperature": 0.5, "max_tokens": 160},
    "turn": {"end_of_turn_ms": 600, "interruptible": True, "min_barge_in_ms": 400},
}
AGENT_PATCH: Example = {"first_message": "Hi, Acme Dental!", "llm": {"temperature": 0.3}, "version": 1}
AGENT: Example = {
    "id": AGENT_ID,
    "tenant_id": TENANT_ID,
    "version": 3,
    "owner_user_id": None,
    "created_at": AT,
    "updated_at": AT,
    **_AGENT_FIELDS,
}
AGENT_VERSION: Example = {
    "agent_id": AGENT_ID,
    "version": 2,
    "created_at": AT,
    "created_by": "api_key:" + KEY_ID,
    **_AGENT_FIELDS,
}
AGENT_DEPLOYMENT: Example = {
    "agent_id": AGENT_ID,
    "version": 3,
    "kv_bucket": "agents",
    "kv_key": "a." + AGENT_ID,
    "kv_version": 3,
    "kv_revision": 118,
    "in_sync": True,
    "config": {"id": AGENT_ID, "tenant_id": TENANT_ID, "version": 3, **_AGENT_FIELDS},
}

# ------------------------------------------------------------------ phone numbers
PHONE_NUMBER_CREATE: Example = {"number": "+14155550100", "agent_id": AGENT_ID}
PHONE_NUMBER_UPDATE: Example = {"agent_id": AGENT_ID, "version": 1}
PHONE_NUMBER: Example = {
    "id": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    "tenant_id": TENANT_ID,
    "number": "+14155550100",
    "agent_id": AGENT_ID,
    "created_at": AT,
    "updated_at": AT,
    "version": 1,
}

# ------------------------------------------------------------------ calls
_LATENCY: Example = {
    "end_of_turn_ms": 240.0,
    "stt_ms": 180.0,
    "llm_first_sentence_ms": 310.0,
    "tts_first_audio_ms": 62.0,
    "voice_to_voice_ms": 812.0,
}
TURN: Example = {
    "turn_id": "t1",
    "speaker": "agent",
    "text": "Sure, what day suits you?",
    "started_at": "2025-01-01T10:00:04.100Z",
    "ended_at": "2025-01-01T10:00:05.900Z",
    "interrupted": False,
    "latency_ms": 812.0,
    "latency": _LATENCY,
}
CALL: Example = {
    "id": "CA5c1b9e0d7a3f4e2b8c6d4a2f0e1b3c5d",
    "tenant_id": TENANT_ID,
    "agent_id": AGENT_ID,
    "agent_version": 3,
    "channel": "twilio",
    "from_number": "+14155550199",
    "to_number": "+14155550100",
    "status": "ended",
    "started_at": AT,
    "answered_at": "2025-01-01T10:00:01Z",
    "ended_at": "2025-01-01T10:02:13Z",
    "end_reason": "caller_hangup",
    "duration_s": 133.0,
}
RECORDING: Example = {
    "status": "ready",
    "duration_s": 94.3,
    "size_bytes": 6035244,
    "created_at": "2025-01-15T10:04:05Z",
    "expires_at": "2025-02-14T10:05:41Z",
    "url": "/v1/calls/CA5c1b9e0d7a3f4e2b8c6d4a2f0e1b3c5d/recording",
}

CALL_DETAIL: Example = {
    **CALL,
    "recording": RECORDING,
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
            **TURN,
            "started_at": "2025-01-01T10:00:05.900Z",
            "ended_at": "2025-01-01T10:00:07.400Z",
        },
    ],
}

# ------------------------------------------------------------------ webhooks
WEBHOOK_CREATE: Example = {
    "url": "https://hooks.example.com/voice",
    "events": ["call.ended", "analytics.summary"],
    "description": "CRM sync",
}
WEBHOOK_UPDATE: Example = {"events": ["call.ended"], "is_active": False, "version": 1}
WEBHOOK: Example = {
    "id": WEBHOOK_ID,
    "tenant_id": TENANT_ID,
    "url": "https://hooks.example.com/voice",
    "events": ["analytics.summary", "call.ended"],
    "description": "CRM sync",
    "is_active": True,
    "created_at": AT,
    "updated_at": AT,
    "version": 1,
}
WEBHOOK_WITH_SECRET: Example = {**WEBHOOK, "events": ["call.ended"], "secret": "whsec_Qm9...kept-secret..."}
WEBHOOK_DELIVERY: Example = {
    "id": "msg_5d41402abc4b2a76b9719d911017c592",
    "webhook_id": WEBHOOK_ID,
    "event_id": "0b5f2c1e9d8a4b7c8e6f1a2b3c4d5e6f",
    "event_type": "call.ended",
    "call_id": "CA0b5f2c1e9d8a4b7c8e6f1a2b3c4d5e6f",
    "status": "delivered",
    "attempts": 2,
    "next_attempt_at": None,
    "last_status": 200,
    "last_error": None,
    "created_at": AT,
    "updated_at": AT,
    "delivered_at": AT,
    "attempt_log": [
        {"at": AT, "status": 503, "error": "HTTP 503", "duration_ms": 41.0, "retry_after_s": 5.0},
        {"at": AT, "status": 200, "error": None, "duration_ms": 38.2, "retry_after_s": None},
    ],
}

# ------------------------------------------------------------------ tenant secrets
SECRET_PUT: Example = {"value": "sk-live-5Kq...kept-secret..."}
TENANT_SECRET: Example = {"tenant_id": TENANT_ID, "name": "openai_key", "created_at": AT, "updated_at": AT}

# ------------------------------------------------------------------ audit
AUDIT_ENTRY: Example = {
    "id": 42,
    "at": AT,
    "actor_type": "api_key",
    "actor_id": "b2c4...",
    "action": "agent.update",
    "resource_type": "agent",
    "resource_id": "3f1c...",
    "request_id": "9b1e2c3d4e5f",
    "details": {"fields": ["system_prompt"], "version": 2},
}
