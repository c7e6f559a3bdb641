"""Call tokens: what control-api grants and ingress checks before a browser call or a chat."""

from __future__ import annotations

import base64
import json
import os

import pytest
from pydantic import ValidationError
from voice_runtime import calltoken
from voice_runtime.calltoken import CallTokenSettings, InvalidCallToken, mint, verify

pytestmark = pytest.mark.unit

KEY = os.urandom(32)


def test_a_minted_token_verifies_to_its_grant() -> None:
    token, grant = mint(KEY, tenant_id="t1", agent_id="a1", channel="webrtc", ttl_s=30, subject="user:u", now=1000.0)
    got = verify(KEY, token, channel="webrtc", now=1010.0)
    assert got == grant and (got.tenant_id, got.agent_id, got.expires_at, got.subject) == ("t1", "a1", 1030.0, "user:u")
    assert mint(KEY, tenant_id="t1", agent_id="a1", channel="webrtc")[1].jti != grant.jti


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda t: t, "expired"),
        (lambda t: t.replace(".", ".x", 1), "signature"),
        (lambda t: "", "malformed"),
        (lambda t: "a.b.c", "malformed"),
        (lambda t: "%%%.%%%", "malformed"),
        (lambda t: "x" * 5000, "malformed"),
    ],
)
def test_bad_tokens_are_refused_without_quoting_them(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    token, _ = mint(KEY, tenant_id="t1", agent_id="a1", channel="webrtc", ttl_s=30, now=1000.0)
    bad = mutate(token)
    with pytest.raises(InvalidCallToken, match=reason) as info:
        verify(KEY, bad, channel="webrtc", now=1030.0 if reason == "expired" else 1001.0)
    assert not bad or bad not in str(info.value)


def test_claims_cannot_be_changed_and_channel_and_key_are_bound() -> None:
    token, _ = mint(KEY, tenant_id="t1", agent_id="a1", channel="webrtc", now=1000.0)
    body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["t"] = "t2"  # another tenant
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + "." + sig
    with pytest.raises(InvalidCallToken, match="signature"):
        verify(KEY, forged, channel="webrtc", now=1001.0)
    with pytest.raises(InvalidCallToken, match="another channel"):
        verify(KEY, token, channel="chat", now=1001.0)
    with pytest.raises(InvalidCallToken, match="signature"):
        verify(os.urandom(32), token, channel="webrtc", now=1001.0)


def test_settings_refuse_a_short_or_garbled_key() -> None:
    good = base64.b64encode(KEY).decode()
    assert CallTokenSettings(call_token_key=good).call_token_key_bytes() == KEY
    assert CallTokenSettings().call_token_key_bytes() is None
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValidationError) as info:
            CallTokenSettings(call_token_key=bad)
        assert bad not in str(info.value)
    assert calltoken.MAX_TTL_S >= 60
