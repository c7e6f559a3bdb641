"""The only place NATS subject strings and KV keys are built.

Every subject is ``call.<call_id>.<kind>[.<sub>]``. Ids are validated so a provider id with dots,
wildcards or whitespace can never change the meaning of a subject.
"""

from __future__ import annotations

import re
import uuid

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOKEN = re.compile(r"^[a-z0-9_]{1,32}$")
_DIGITS = re.compile(r"^\+?[0-9]{3,20}$")
_NUMBER_KEY = re.compile(r"n([0-9]{3,20})")
_AGENT_KEY = re.compile(r"a\.([A-Za-z0-9_-]{1,64})(?:\.v([0-9]+))?")

ROOT = "call"


class InvalidSubjectToken(ValueError):
    """An id or token would break (or widen) a subject."""


def new_call_id() -> str:
    """A URL- and subject-safe call id."""
    return "CA" + uuid.uuid4().hex


def new_id() -> str:
    return uuid.uuid4().hex


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidSubjectToken(f"{what} {value!r} is not a subject-safe id ([A-Za-z0-9_-], 1-64 chars)")
    return value


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise InvalidSubjectToken(f"subject token {value!r} is not allowed")
    return value


def call_subject(call_id: str, kind: str, *sub: str) -> str:
    """``call.<call_id>.<kind>[.<sub>...]`` for one call."""
    parts = [ROOT, check_id(call_id, "call_id"), _token(kind), *(_token(s) for s in sub)]
    return ".".join(parts)


def any_call(kind: str, *sub: str) -> str:
    """Subscription pattern for ``kind`` across all calls: ``call.*.<kind>[.<sub>]``."""
    parts = [ROOT, "*", _token(kind)]
    for s in sub:
        parts.append(s if s in ("*", ">") else _token(s))
    return ".".join(parts)


def call_filter(call_id: str, kind: str, *sub: str) -> str:
    """Subscription pattern under one call; ``*`` / ``>`` allowed after the kind."""
    parts = [ROOT, check_id(call_id, "call_id"), _token(kind)]
    for s in sub:
        parts.append(s if s in ("*", ">") else _token(s))
    return ".".join(parts)


def call_wildcard(call_id: str) -> str:
    """Everything about one call: ``call.<call_id>.>``."""
    return f"{ROOT}.{check_id(call_id, 'call_id')}.>"


def call_id_of(subject: str) -> str:
    """The call id inside a ``call.<id>.…`` subject."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != ROOT:
        raise InvalidSubjectToken(f"{subject!r} is not a call subject")
    return check_id(parts[1], "call_id")


def pattern_of(subject: str) -> str:
    """The subject with its call id replaced by ``*`` (for span names and metric labels)."""
    parts = subject.split(".")
    if len(parts) >= 2 and parts[0] == ROOT:
        parts[1] = "*"
    return ".".join(parts)


# Audio (real-time class): raw PCM16 frames, metadata in headers.
def audio_in(call_id: str) -> str:
    return call_subject(call_id, "audio", "in")


def audio_out(call_id: str) -> str:
    return call_subject(call_id, "audio", "out")


def audio_played(call_id: str) -> str:
    """The agent audio ingress actually played to the caller (the played-audio tap), on the call's clock."""
    return call_subject(call_id, "audio", "played")


# Core request/reply to ingress (never captured by a stream): control-api asks, ingress answers.
INGRESS_RPC = "ingress.rpc"


def ingress_rpc(channel: str, op: str) -> str:
    """``ingress.rpc.<channel>.<op>``: a request any ingress replica may answer (served in a queue group)."""
    return f"{INGRESS_RPC}.{_token(channel)}.{_token(op)}"


def ingress_call_rpc(channel: str, call_id: str, op: str) -> str:
    """``ingress.rpc.<channel>.<call_id>.<op>``: a request about one live call, answered by the replica that
    holds it (no responders once it has ended there)."""
    return f"{INGRESS_RPC}.{_token(channel)}.{check_id(call_id, 'call_id')}.{_token(op)}"


# Core request/reply to media (never captured by a stream): stt asks the media replica that owns a call for the
# audio of the caller's turn in progress (partial transcripts; ``voice_schemas.audio.TurnAudio``).
MEDIA_RPC = "media.rpc"
TURN_AUDIO = "turn_audio"


def media_call_rpc(call_id: str, op: str) -> str:
    """``media.rpc.<call_id>.<op>``: a request about one live call, answered by the media replica that owns it (no
    responders once it has ended there)."""
    return f"{MEDIA_RPC}.{check_id(call_id, 'call_id')}.{_token(op)}"


def dead_letter(stream: str, consumer: str) -> str:
    return f"dlq.{_token(stream.lower())}.{_token(consumer.lower().replace('-', '_'))}"


# KV keys: [-/_=.a-zA-Z0-9]+ only.
def number_key(e164: str) -> str:
    """KV key for a phone number ('+15551234567' -> 'n15551234567')."""
    if not _DIGITS.fullmatch(e164):
        raise InvalidSubjectToken("phone number is not in E.164 form")
    return "n" + e164.lstrip("+")


def agent_key(agent_id: str) -> str:
    return "a." + check_id(agent_id, "agent_id")


def agent_version_key(agent_id: str, version: int) -> str:
    return f"a.{check_id(agent_id, 'agent_id')}.v{int(version)}"


def parse_number_key(key: str) -> str | None:
    """The E.164 number of a ``number_key`` ('n15551234567' -> '+15551234567'); None for any other key."""
    m = _NUMBER_KEY.fullmatch(key)
    return "+" + m.group(1) if m else None


def parse_agent_key(key: str) -> tuple[str, int | None] | None:
    """'a.<id>' (``agent_key``) -> (id, None); 'a.<id>.v<n>' (``agent_version_key``) -> (id, n);
    None for any other key."""
    m = _AGENT_KEY.fullmatch(key)
    if m is None:
        return None
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def call_key(call_id: str) -> str:
    return check_id(call_id, "call_id")


def provider_key(provider_sid: str) -> str:
    """KV ``calls`` key mapping a provider's call id (Twilio CallSid) to ours: 'p.<sid>'."""
    return "p." + check_id(provider_sid, "provider call id")


def grant_key(jti: str) -> str:
    """KV ``calls`` key recording that the call token with this id was used: 'g.<jti>' (it expires with the
    bucket's TTL, long after the token itself)."""
    return "g." + check_id(jti, "call token id")


def trunk_key(trunk_id: str) -> str:
    """KV ``trunks`` key of a SIP trunk: 't.<trunk_id>'."""
    return f"t.{check_id(trunk_id, 'trunk_id')}"


def parse_trunk_key(key: str) -> str | None:
    """The trunk id of a ``trunk_key``; None for any other key."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] != "t" or not _ID.fullmatch(parts[1]):
        return None
    return parts[1]


def secret_key(tenant_id: str, name: str) -> str:
    """KV ``secrets`` key of a sealed tenant secret: 's.<tenant>.<name>'."""
    return f"s.{check_id(tenant_id, 'tenant_id')}.{check_id(name, 'secret name')}"


def parse_secret_key(key: str) -> tuple[str, str] | None:
    """(tenant_id, name) of a ``secret_key``; None for any other key."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "s" or not all(_ID.fullmatch(p) for p in parts[1:]):
        return None
    return parts[1], parts[2]


def media_claim_key(call_id: str) -> str:
    """KV ``calls`` key naming the media replica that follows the call's audio: 'm.<call_id>' (taken over, by
    compare-and-set, when that replica's heartbeat ages out)."""
    return "m." + check_id(call_id, "call_id")
