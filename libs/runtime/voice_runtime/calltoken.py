"""Short-lived call tokens: control-api grants a signed-in user or API key a call to one agent of their tenant,
ingress starts a browser call (WebRTC) or a text chat only against a valid grant.

A token is ``base64url(json claims) . base64url(HMAC-SHA256(key, claims))``. The claims bind tenant, agent,
channel and an expiry; ``jti`` lets ingress refuse a second use (it records used ids where every replica sees
them). The key (``CALL_TOKEN_KEY``) is given only to control-api, which mints, and ingress, which verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from pydantic import Field, SecretStr, field_validator

from .settings import _Settings

MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 2048
MAX_TTL_S = 600


class InvalidCallToken(ValueError):
    """The token is malformed, forged, expired, or for another channel. The message never quotes the token."""


@dataclass(frozen=True, slots=True)
class CallGrant:
    tenant_id: str
    agent_id: str
    channel: str
    expires_at: float
    jti: str
    subject: str = ""  # who asked (``user:<id>`` / ``api_key:<id>``), for the audit trail


class CallTokenSettings(_Settings):
    """The key that signs browser and chat call grants (control-api mints, ingress verifies)."""

    call_token_key: SecretStr | None = Field(
        None,
        description="At least 32 random bytes, base64 (openssl rand -base64 32); the same value for control-api and "
        "ingress. Unset: browser and chat calls are refused",
    )
    call_token_ttl_s: float = Field(60.0, gt=0, le=MAX_TTL_S, description="How long a call grant may wait for use")

    @field_validator("call_token_key")
    @classmethod
    def _call_token_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_token_key(value.get_secret_value())  # refused at start-up, without quoting the value
        return value

    def call_token_key_bytes(self) -> bytes | None:
        return parse_token_key(self.call_token_key.get_secret_value()) if self.call_token_key else None


def parse_token_key(value: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (ValueError, TypeError) as e:
        raise ValueError("CALL_TOKEN_KEY must be base64") from e
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"CALL_TOKEN_KEY must hold at least {MIN_KEY_BYTES} bytes")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def mint(
    key: bytes,
    *,
    tenant_id: str,
    agent_id: str,
    channel: str,
    ttl_s: float = 60.0,
    subject: str = "",
    now: float | None = None,
) -> tuple[str, CallGrant]:
    """A signed token for one call to ``agent_id`` of ``tenant_id`` over ``channel``, and its grant."""
    issued = time.time() if now is None else now
    grant = CallGrant(
        tenant_id=tenant_id,
        agent_id=agent_id,
        channel=channel,
        expires_at=issued + min(ttl_s, MAX_TTL_S),
        jti=secrets.token_hex(16),
        subject=subject,
    )
    claims = json.dumps(
        {
            "t": grant.tenant_id,
            "a": grant.agent_id,
            "c": grant.channel,
            "e": grant.expires_at,
            "j": grant.jti,
            "s": grant.subject,
        },
        separators=(",", ":"),
    ).encode()
    return f"{_b64(claims)}.{_b64(_sign(key, claims))}", grant


def verify(key: bytes, token: str, *, channel: str, now: float | None = None) -> CallGrant:
    """The grant a token carries, or ``InvalidCallToken``. Checks the signature first, then expiry and channel."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise InvalidCallToken("malformed call token")
    body, sig = token.split(".")
    try:
        claims_raw, given = _unb64(body), _unb64(sig)
    except (ValueError, TypeError) as e:
        raise InvalidCallToken("malformed call token") from e
    if not hmac.compare_digest(given, _sign(key, claims_raw)):
        raise InvalidCallToken("call token signature does not match")
    try:
        claims = json.loads(claims_raw)
        grant = CallGrant(
            tenant_id=str(claims["t"]),
            agent_id=str(claims["a"]),
            channel=str(claims["c"]),
            expires_at=float(claims["e"]),
            jti=str(claims["j"]),
            subject=str(claims.get("s", "")),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidCallToken("malformed call token claims") from e
    if (time.time() if now is None else now) >= grant.expires_at:
        raise InvalidCallToken("call token expired")
    if grant.channel != channel:
        raise InvalidCallToken("call token is for another channel")
    return grant


def _sign(key: bytes, claims: bytes) -> bytes:
    return hmac.new(key, b"voice-call-token\x00" + claims, hashlib.sha256).digest()
