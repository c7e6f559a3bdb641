"""Tenant secrets: sealed values open only with the key, for their tenant and name."""

from __future__ import annotations

import base64
import os

import pytest
from voice_runtime.secretbox import SecretBox, SecretError, parse_key

pytestmark = pytest.mark.unit


def test_a_sealed_secret_opens_only_for_its_tenant_and_name() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("t1", "llm-key", "sk-live-123")
    assert b"sk-live-123" not in sealed
    assert box.open("t1", "llm-key", sealed) == "sk-live-123"
    for tenant, name in (("t2", "llm-key"), ("t1", "other")):
        with pytest.raises(SecretError):
            box.open(tenant, name, sealed)
    with pytest.raises(SecretError):
        SecretBox(os.urandom(32)).open("t1", "llm-key", sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretError):
        box.open("t1", "llm-key", tampered)
    assert box.seal("t1", "llm-key", "x") != box.seal("t1", "llm-key", "x")  # fresh nonce each time


def test_the_key_setting_must_be_32_base64_bytes() -> None:
    assert len(parse_key(base64.b64encode(os.urandom(32)).decode())) == 32
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            parse_key(bad)
