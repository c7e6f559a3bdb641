"""Where a live call may be transferred: the tenant's transfer allow-list (against toll fraud).

A transfer (through the API, or an agent's ``transfer_call`` tool) hands the caller to a destination the
platform pays to reach, so only destinations the tenant's admins listed are allowed; an empty list allows none.
A pattern is one of:

- an exact E.164 number: ``+14155550100`` (written with spaces or dashes, it is stored normalised);
- an E.164 prefix ending in ``*``: ``+4930*`` allows every number that starts with ``+4930``;
- an exact SIP URI: ``sip:desk@pbx.example.com`` (``sips:`` too; scheme and host compare case-insensitively,
  the user part and parameters exactly).

``parse_pattern`` and ``parse_target`` validate and normalise (pure); ``permits`` decides (pure, and never
raises: a target that is not a number or a SIP URI is simply not permitted). ``allowed_targets`` reads a
tenant's list; other use cases (agent tools checked at save time, the transfer command) import these.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import asyncpg

from ..context import AppContext
from ..fields import normalize_e164
from ..principal import Principal
from ..store import tenants as store
from . import audit_log
from .common import connection, found, transaction
from .errors import Forbidden, InvalidField, NotFound

MAX_PATTERNS = 200
MAX_SIP_URI = 256

_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}\*")
_SEPARATORS = re.compile(r"[ ()./-]")
# sip:user@host[:port][;param[=value]]... : no headers (?...), no display names, no whitespace.
_SIP = re.compile(
    r"(?P<scheme>sips?):"
    r"(?P<user>[A-Za-z0-9\-_.!~*'()&=+$,%]{1,64})@"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?P<port>:[0-9]{1,5})?"
    r"(?P<params>(?:;[A-Za-z0-9\-_.!~*'()%]{1,32}(?:=[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]{1,64})?){0,8})",
    re.IGNORECASE,
)


def is_sip_uri(value: str) -> bool:
    return value[:5].lower().startswith(("sip:", "sips:"))


def _sip(value: str) -> str:
    m = _SIP.fullmatch(value) if len(value) <= MAX_SIP_URI else None
    if m is None:
        raise ValueError("must be a SIP URI such as sip:desk@pbx.example.com (no display name or headers)")
    port = m["port"] or ""
    if port and not 0 < int(port[1:]) < 65536:
        raise ValueError("the SIP URI's port must be 1-65535")
    return f"{m['scheme'].lower()}:{m['user']}@{m['host'].lower()}{port}{m['params']}"


def parse_target(value: str) -> str:
    """A transfer destination, normalised: an E.164 number or a SIP URI. ValueError says what is wrong."""
    value = value.strip()
    if is_sip_uri(value):
        return _sip(value)
    return normalize_e164(value)


def parse_pattern(value: str) -> str:
    """One allow-list pattern, normalised (see the module docstring). ValueError says what is wrong."""
    value = value.strip()
    if is_sip_uri(value):
        return _sip(value)
    return parse_number_pattern(value)


def parse_number_pattern(value: str) -> str:
    """An E.164 number, or a number prefix ending in ``*``, normalised. ValueError says what is wrong."""
    value = value.strip()
    if value.endswith("*"):
        prefix = _SEPARATORS.sub("", value)
        if not _PREFIX.fullmatch(prefix):
            raise ValueError("a number prefix must be + and 1-15 digits followed by *, e.g. +4930*")
        return prefix
    if "*" in value:
        raise ValueError("* may only end a number prefix, e.g. +4930*")
    return normalize_e164(value)


def parse_patterns(values: list[str], parse: Callable[[str], str] = parse_pattern) -> list[str]:
    """A whole allow-list, normalised, duplicates dropped (first one kept). InvalidField names the bad entry."""
    if len(values) > MAX_PATTERNS:
        raise InvalidField("patterns", f"at most {MAX_PATTERNS} entries")
    out: dict[str, None] = {}
    for i, value in enumerate(values):
        try:
            out[parse(value)] = None
        except ValueError as e:
            raise InvalidField(f"patterns[{i}]", str(e)) from None
    return list(out)


def _matches(pattern: str, target: str) -> bool:
    if pattern.endswith("*"):
        return target.startswith("+") and target.startswith(pattern[:-1])
    return pattern == target


def permits(patterns: list[str], target: str) -> bool:
    """Whether ``target`` (a number or SIP URI, normalised here) is on the allow-list ``patterns`` (as
    ``parse_pattern`` returns them). A target that does not parse is never permitted."""
    if not isinstance(target, str):
        return False
    try:
        normal = parse_target(target)
    except ValueError:
        return False
    return any(_matches(p, normal) for p in patterns)


async def allowed_targets(conn: asyncpg.Connection, tenant_id: str) -> list[str]:
    """The tenant's allow-list patterns (empty: no transfer is allowed)."""
    return await store.transfer_allow_list(conn, tenant_id)


def _check_tenant(principal: Principal, tenant_id: str) -> None:
    """As for the tenant itself: its own users, and platform admins."""
    if not (principal.platform_admin or principal.tenant_id == tenant_id):
        raise NotFound("tenant")


async def get_allow_list(ctx: AppContext, principal: Principal, tenant_id: str) -> list[str]:
    _check_tenant(principal, tenant_id)
    async with connection(ctx) as conn:
        found(await store.get(conn, tenant_id), "tenant")
        return await allowed_targets(conn, tenant_id)


async def put_allow_list(ctx: AppContext, principal: Principal, tenant_id: str, values: list[str]) -> list[str]:
    """Replace the list (admins only); the list as stored. Audited with its size, never its numbers."""
    _check_tenant(principal, tenant_id)
    if not (principal.platform_admin or principal.is_admin):
        raise Forbidden("admin role required")
    patterns = parse_patterns(values)
    async with transaction(ctx) as conn:
        found(await store.get(conn, tenant_id, for_update=True), "tenant")  # serialises concurrent replaces
        await store.replace_transfer_allow_list(conn, tenant_id, patterns)
        await audit_log.record(
            conn,
            principal,
            "tenant.transfer_allow_list.update",
            "tenant",
            tenant_id,
            tenant_id=tenant_id,
            entries=len(patterns),
        )
    return patterns
