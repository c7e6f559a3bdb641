"""Credential primitives, free of I/O: API keys, refresh tokens, console sessions and their CSRF tokens, passwords
(argon2) and access tokens (JWT).

API keys and refresh tokens are 256-bit random secrets, so a single SHA-256 is enough to store them
(a slow hash protects guessable passwords, not random keys) and lets every request be checked cheaply.
A key looks like ``vk_<8 chars>_<secret>``; ``vk_<8 chars>`` is the visible prefix the row is found by.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Role = Literal["admin", "supervisor"]
ROLES: tuple[Role, ...] = ("admin", "supervisor")

KEY_PREFIX = "vk_"
REFRESH_PREFIX = "vr_"
SESSION_PREFIX = "vs_"
_KEY_RE = re.compile(r"^vk_([a-z0-9]{8})_[A-Za-z0-9_-]{20,}$")
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
JWT_ISSUER = "voice-control-api"
JWT_ALGORITHM = "HS256"


def new_id() -> str:
    """A subject-safe resource id (32 hex chars)."""
    return uuid.uuid4().hex


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: str
    prefix: str
    key_hash: str


def generate_api_key() -> NewKey:
    short = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    key = f"{KEY_PREFIX}{short}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, prefix=key_prefix(key), key_hash=sha256_hex(key))


def key_prefix(key: str) -> str:
    """The visible, indexed part of a key. Keys not issued here (a bootstrap key chosen by the
    operator) get a prefix derived from their hash, which never collides with an issued one."""
    m = _KEY_RE.match(key)
    if m:
        return KEY_PREFIX + m.group(1)
    return "ext_" + sha256_hex(key)[:12]


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(sha256_hex(key), stored_hash)


def generate_refresh_token() -> tuple[str, str]:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    return token, sha256_hex(token)


def generate_session_token() -> tuple[str, str]:
    """A console session's cookie value and the hash it is stored under."""
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    return token, sha256_hex(token)


def csrf_token(session_token: str) -> str:
    """The CSRF token of a console session: derived from the session's secret (so nothing more is stored), and
    useless without the cookie it belongs to; the cookie's secret cannot be recovered from it."""
    return hmac.new(session_token.encode(), b"voice-console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(session_token), presented.strip())


def generate_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class Passwords:
    """argon2id hashing (argon2-cffi defaults). Verification is CPU-bound: call it off the event loop."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # verified against when the email is unknown, so timing does not reveal which emails exist
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    tenant_id: str
    role: str
    expires_at: float


class AccessTokens:
    """Short-lived HS256 access tokens for the web console."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret) < 32:
            raise ValueError("JWT secret must be at least 32 characters")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, user_id: str, tenant_id: str, role: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": JWT_ISSUER,
            "sub": user_id,
            "tid": tenant_id,
            "role": role,
            "typ": "access",
            "iat": int(now),
            "exp": int(now) + self.ttl_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                issuer=JWT_ISSUER,
                leeway=5,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from e
        if claims.get("typ") != "access" or not isinstance(claims.get("tid"), str):
            raise InvalidToken("not an access token")
        return AccessClaims(
            user_id=str(claims["sub"]),
            tenant_id=claims["tid"],
            role=str(claims.get("role")),
            expires_at=float(claims["exp"]),
        )
