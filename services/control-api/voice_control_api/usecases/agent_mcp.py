"""The checks an agent's MCP servers (``mcp_servers``) pass before a version holding them is saved, beside the tools'
(``agent_tools``; the request models give each server its shape, this refuses what a shape cannot):

- names: server names unique per agent (ignoring case); allow-listed tools unique per server as the model sees
  them; each function name ``<server>__<tool>`` (``mcp_function_name``) at most 64 characters (what chat APIs take)
  and not the name of one of the agent's own tools (ignoring case);
- the URL: an absolute http(s) URL without credentials, spaces, control characters or braces (no placeholders: a
  secret goes in a header); its host not an internal address unless the operator allow-lists it (EGRESS_ALLOW; the
  same early check as HTTP tools, brain's connect-time guard is what enforces it);
- headers: HTTP tokens, none the HTTP client sets, no control characters, values whose only braces are
  ``{{secret:NAME}}`` references (there are no arguments to fill in), each a secret of the agent's own tenant;
- no text PostgreSQL cannot hold (NUL) or that is not Unicode, anywhere in a server.

Each refusal is an ``InvalidField`` naming the field (``mcp_servers.0.url``, ``mcp_servers.1.allowed_tools.2.name``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from voice_runtime.egress import EgressPolicy
from voice_schemas.agent import McpServerSpec, mcp_function_name

from . import tenant_secrets
from .agent_tools import _CONTROL, Refs, Tool, _first_use, check_egress, check_headers, check_text
from .errors import InvalidField

MAX_FUNCTION_NAME = 64


def _check_url(server: McpServerSpec, where: str, refs: Refs) -> None:
    url, at = server.url, f"{where}.url"
    if _CONTROL.search(url) or " " in url:
        raise InvalidField(at, "must not contain spaces, CR, LF or other control characters")
    if "{" in url or "}" in url:
        raise InvalidField(at, "must not hold placeholders or {{secret:NAME}}: put a secret in a header")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise InvalidField(at, "not a URL with a port from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField(at, "must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidField(at, "must not carry credentials: put them in a header as {{secret:NAME}}")
    refs.urls.append((at, urlunsplit(parts._replace(path="/", query="", fragment=""))))


def check_servers(servers: Sequence[McpServerSpec], tools: Sequence[Tool]) -> Refs:
    """Every check that needs no I/O; the URLs and secrets left to check with the network and the tenant's data."""
    refs = Refs()
    taken = {t.name.lower(): f"tools.{i}" for i, t in enumerate(tools)}
    names: dict[str, int] = {}
    for i, server in enumerate(servers):
        where = f"mcp_servers.{i}"
        check_text(server.model_dump(mode="json"), where)
        key = server.name.lower()
        if key in names:
            raise InvalidField(f"{where}.name", f"mcp_servers.{names[key]} has this name already (names ignore case)")
        names[key] = i
        _check_url(server, where, refs)
        check_headers(server.headers, where, set(), refs)
        for j, allowed in enumerate(server.allowed_tools):
            at = f"{where}.allowed_tools.{j}.name"
            function = mcp_function_name(server.name, allowed.name)
            if len(function) > MAX_FUNCTION_NAME:
                raise InvalidField(at, f"with the server's name, the model's name for it ({function[:20]}…) would be "
                                       f"longer than {MAX_FUNCTION_NAME} characters: shorten the server's name")
            if function.lower() in taken:
                raise InvalidField(at, f"the model would call it {function}, the name of {taken[function.lower()]}")
            taken[function.lower()] = f"{where}.allowed_tools.{j}"
    return refs


async def check(policy: EgressPolicy, conn: asyncpg.Connection, tenant_id: str, servers: Sequence[McpServerSpec],
                tools: Sequence[Tool]) -> None:
    """Everything above, for the MCP servers of a version of an agent of ``tenant_id`` (with its ``tools``, whose
    names the servers' tools must not take); the secrets they name stay until the caller's transaction ends."""
    if not servers:
        return
    refs = check_servers(servers, tools)
    outcomes = await asyncio.gather(*(check_egress(policy, f, u) for f, u in refs.urls), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    for where, name in _first_use(refs.secrets):
        await tenant_secrets.check_reference(conn, tenant_id, where, name)
