"""Tenant secrets at rest and in transit: AES-256-GCM under the deployment's ``SECRETS_KEY``.

The ciphertext is bound to its tenant and name (associated data), so a value cannot be moved to another tenant
or another name and still open. Only the services that use tenant secrets are given ``SECRETS_KEY``
(control-api, which stores them, and the services that dial tenant endpoints); every other service, and anyone
who reads PostgreSQL or a KV bucket, sees ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"v1"
_NONCE = 12


class SecretError(Exception):
    """A secret that cannot be opened (wrong key, tampered, or bound to another tenant or name)."""


def parse_key(raw: str) -> bytes:
    """``SECRETS_KEY``: 32 random bytes, base64 (e.g. ``openssl rand -base64 32``)."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("SECRETS_KEY must be base64") from e
    if len(key) != 32:
        raise ValueError("SECRETS_KEY must hold 32 bytes (base64 of 32 random bytes)")
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(tenant_id: str, name: str) -> bytes:
        return b"\x00".join((_VERSION, tenant_id.encode(), name.encode()))

    def seal(self, tenant_id: str, name: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, value.encode(), self._aad(tenant_id, name))

    def open(self, tenant_id: str, name: str, sealed: bytes) -> str:
        if sealed[:2] != _VERSION or len(sealed) < 2 + _NONCE + 16:
            raise SecretError("not a sealed secret")
        nonce, body = sealed[2:2 + _NONCE], sealed[2 + _NONCE:]
        try:
            return self._aead.decrypt(nonce, body, self._aad(tenant_id, name)).decode()
        except InvalidTag as e:
            raise SecretError(f"secret {name!r} does not open with this key for this tenant") from e
