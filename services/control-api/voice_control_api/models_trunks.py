"""API models of SIP trunks (``/v1/sip-trunks``) and outbound calls (``POST /v1/calls``).

A trunk's shape is ``voice_schemas.agent.SipTrunk`` (what ingress reads from KV ``trunks``); here it is held to
what an API client may write: CIDRs that parse, regexes that compile with templates that fit them, host[:port]
proxies, E.164 caller ids, credentials given as user and secret name together. Passwords are tenant secret names
(checked to exist when saved); a value is never accepted or returned here.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from voice_schemas.agent import DIGEST_ALGORITHMS, DigestAlgorithm, TrunkNumberRule

from .fields import E164, ID_PATTERN, Id, Name, clean_text
from .models import VERSION_FIELD_DESCRIPTION, RequestModel, patch_of

MAX_SOURCES = 50
MAX_RULES = 20
_HOST = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?"
)
_GROUP_REF = re.compile(r"\\(?:g<([^>]*)>|([0-9]{1,2}))")
_USER = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")]
SecretRef = Annotated[
    str, StringConstraints(pattern=ID_PATTERN), Field(description="Name of a tenant secret (PUT /v1/secrets/{name})")
]


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR such as 203.0.113.0/24") from None


def _host_port(value: str) -> str:
    value = value.strip()
    m = _HOST.fullmatch(value)
    if m is None:
        raise ValueError("must be host[:port], e.g. sip.carrier.example or 203.0.113.10:5060")
    if m["port"] is not None and not 0 < int(m["port"]) < 65536:
        raise ValueError("the port must be 1-65535")
    return value.lower()


def split_host_port(value: str) -> tuple[str, int]:
    """(host, port) of a ``HostPort`` (port 5060 when none is written); the host without IPv6 brackets."""
    m = _HOST.fullmatch(value)
    if m is None:
        raise ValueError("not host[:port]")
    return m["host"].strip("[]"), int(m["port"] or 5060)


class NumberRuleConfig(TrunkNumberRule):
    """``match`` (a Python regex) must match the whole Request-URI user; ``replace`` (a template using its
    groups, ``\\1`` or ``\\g<name>``) must give an E.164 number, so it starts with ``+``."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _template_fits(self) -> NumberRuleConfig:
        pattern = re.compile(self.match)
        if not self.replace.startswith(("+", "\\")):
            raise ValueError("replace must give an E.164 number: start it with + (or a group holding one)")
        for named, numbered in _GROUP_REF.findall(self.replace):
            if numbered and int(numbered) > pattern.groups:
                raise ValueError(f"replace uses group {numbered} but match has {pattern.groups} group(s)")
            if named and not (named in pattern.groupindex or (named.isdigit() and int(named) <= pattern.groups)):
                raise ValueError(f"replace uses group {named!r} that match does not define")
        return self


Cidr = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_cidr)]
HostPort = Annotated[str, StringConstraints(min_length=1, max_length=260), AfterValidator(_host_port)]

_EXAMPLE: Any = {
    "name": "carrier-eu",
    "inbound_sources": ["203.0.113.0/24"],
    "inbound_username": "pbx-office",
    "inbound_password_secret": "pbx_office_password",
    "digest_algorithms": ["SHA-256", "MD5"],
    "number_rules": [{"match": "0(\\d{6,14})", "replace": "+49\\1"}, {"match": "(\\d{3})", "replace": "+4930123\\1"}],
    "outbound_proxy": "sip.carrier.example:5060",
    "outbound_transport": "udp",
    "outbound_username": "acct-1234",
    "outbound_password_secret": "carrier_password",
    "outbound_caller_id": "+493012345678",
    "supports_refer": True,
}


class SipTrunkFields(RequestModel):
    """What a trunk is made of (the body of create)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})
    name: Annotated[Name, StringConstraints(max_length=64)]
    inbound_sources: list[Cidr] = Field(
        default_factory=list, max_length=MAX_SOURCES,
        description="CIDRs that may send INVITEs for this trunk; empty: any source, when digest credentials are set",
    )
    inbound_username: _USER | None = Field(None, description="Digest user callers must present (with the secret)")
    inbound_password_secret: SecretRef | None = None
    digest_algorithms: list[DigestAlgorithm] = Field(
        default_factory=lambda: list(DIGEST_ALGORITHMS), min_length=1, max_length=2,
        description="Digest algorithms offered to callers, in order",
    )
    number_rules: list[NumberRuleConfig] = Field(
        default_factory=list, max_length=MAX_RULES,
        description="Tried in order on the Request-URI user of an inbound INVITE; the first full match gives the "
        "E.164 number routed as a phone number (no match: the user as given, when it is already E.164)",
    )
    outbound_proxy: HostPort | None = Field(None, description="host[:port] where outbound INVITEs go (port 5060)")
    outbound_transport: Literal["udp", "tcp"] = "udp"
    outbound_username: _USER | None = Field(None, description="Digest user for the carrier's challenges")
    outbound_password_secret: SecretRef | None = None
    outbound_caller_id: E164 | None = Field(None, description="E.164 used as From when a call request gives none")
    supports_refer: bool = Field(True, description="Whether transfers may use REFER on this trunk")

    @model_validator(mode="after")
    def _pairs(self) -> SipTrunkFields:
        _pair(self.inbound_username, self.inbound_password_secret, "inbound")
        _pair(self.outbound_username, self.outbound_password_secret, "outbound")
        if self.outbound_username and not self.outbound_proxy:
            raise ValueError("outbound credentials need an outbound_proxy")
        return self


def _pair(user: str | None, secret: str | None, side: str) -> None:
    if (user is None) != (secret is None):
        raise ValueError(f"{side}_username and {side}_password_secret go together (both or neither)")


SipTrunkCreate = SipTrunkFields


class SipTrunkUpdate(patch_of(SipTrunkFields)):  # type: ignore[misc]
    """Fields to change (unset: unchanged; null clears an optional one). The result is checked as a whole."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inbound_sources": ["198.51.100.7"]}]})
    version: int | None = Field(None, ge=1, description=VERSION_FIELD_DESCRIPTION)


class SipTrunkOut(BaseModel):
    """A SIP trunk; its passwords are only the names of tenant secrets."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5b0e3c0e2f7e4d8f9a1b2c3d4e5f6a7b", "tenant_id": "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4", **_EXAMPLE,
        "created_at": "2026-01-05T10:00:00Z", "updated_at": "2026-01-05T10:00:00Z", "version": 1,
    }]})
    id: str
    tenant_id: str
    name: str
    inbound_sources: list[str]
    inbound_username: str | None
    inbound_password_secret: str | None
    digest_algorithms: list[str]
    number_rules: list[TrunkNumberRule]
    outbound_proxy: str | None
    outbound_transport: str
    outbound_username: str | None
    outbound_password_secret: str | None
    outbound_caller_id: str | None
    supports_refer: bool
    created_at: datetime
    updated_at: datetime
    version: int


# ------------------------------------------------------------------ outbound calls
class OutboundCallCreate(RequestModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"agent_id": "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4", "to": "+14155550100", "from": "+14155550199",
         "channel": "twilio"},
        {"agent_id": "3f1c9a2be07d4c4f9a0d7f35c2a1b6e4", "to": "+493012345678", "channel": "sip",
         "trunk_id": "5b0e3c0e2f7e4d8f9a1b2c3d4e5f6a7b"},
    ]}, populate_by_name=True)
    agent_id: Id
    to: Annotated[str, StringConstraints(min_length=1, max_length=32), AfterValidator(clean_text)] = Field(
        description="E.164 destination; must be on the tenant's outbound allow-list"
    )
    from_: E164 | None = Field(
        None, alias="from",
        description="Caller id shown to the callee (Twilio: a number of the account; SIP: default the trunk's "
        "outbound_caller_id)",
    )
    channel: Literal["twilio", "sip"] = "twilio"
    trunk_id: Id | None = Field(None, description="The tenant's SIP trunk (channel sip only, required there)")

    @model_validator(mode="after")
    def _trunk(self) -> OutboundCallCreate:
        if self.channel == "sip" and self.trunk_id is None:
            raise ValueError("channel sip needs trunk_id")
        if self.channel != "sip" and self.trunk_id is not None:
            raise ValueError("trunk_id is only for channel sip")
        return self


class OutboundCallStarted(BaseModel):
    call_id: str = Field(description="Follow it in GET /v1/calls/{id} and the live feed (call.dial_status)")
    status: Literal["dialing"] = "dialing"


class OutboundAllowList(BaseModel):
    """The destinations POST /v1/calls may dial (exact E.164 numbers, or prefixes ending in `*`); empty: none."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"patterns": ["+4930*", "+14155550100"]}]})
    patterns: list[str]


class OutboundAllowListUpdate(RequestModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"patterns": ["+49 30*", "+1415555*"]}]})
    patterns: list[Annotated[str, StringConstraints(min_length=1, max_length=40), AfterValidator(clean_text)]] = (
        Field(max_length=200, description="E.164 numbers or prefixes ending in `*`; the whole list is replaced")
    )
