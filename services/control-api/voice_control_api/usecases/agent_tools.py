"""The checks an agent's tools pass before a version holding them is saved (create, replace, patch, restore).

The request models (``models.ToolConfig``) give each tool its shape; this module refuses what a shape cannot:

- names: unique per agent, ignoring case (the model tells tools apart by name alone), and a built-in's name
  (``end_call``, ``transfer_call``, ``send_dtmf``, ``hold``) only on that built-in; transfer destination names unique
  per tool; a hold's spoken ``line`` is words (not blank, no line breaks); ``send_dtmf``'s ``max_digits`` and a
  hold's ``max_hold_s`` are bounded by their shape (1-32 keys, 5-600 s);
- HTTP tools: an http(s) URL without credentials whose host is literal (a ``{param}`` placeholder in the host or
  port would let the model choose where the request goes); ``{param}`` placeholders in the URL and header values
  that each name a property of ``parameters`` (the syntax brain fills, ``voice_brain.tools``: any other brace is
  refused rather than sent as it is); header names that are HTTP tokens (no framing or hop-by-hop headers); no
  CR, LF or other control characters in the URL or a header; ``parameters`` a JSON Schema of an object that the
  ``jsonschema`` package accepts, bounded in size, with local ``$ref`` only;
- no text PostgreSQL cannot hold (NUL) or that is not Unicode (lone surrogates), anywhere in a tool;
- what needs the tenant's data or the network: each HTTP tool's host is not an internal address unless the
  operator allow-lists it (EGRESS_ALLOW; the same early check as an agent's LLM endpoint and a webhook's URL —
  brain's connect-time guard is what enforces it), every ``{{secret:NAME}}`` in a header value (or the URL's path
  or query, which headers suit better: URLs end up in servers' logs) is a secret of the agent's own tenant,
  and every transfer target is on the tenant's transfer allow-list (an empty list permits nothing).

Each refusal is an ``InvalidField`` naming the path of the field (``tools.1.url``, ``tools.0.destinations.2.target``),
which the API answers as a 422 problem and the console shows next to the tools field. Messages never repeat a
header value or a transfer target (both may be personal data or credentials).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from voice_runtime.egress import BlockedAddress, EgressPolicy, check_url
from voice_schemas.agent import (
    ARGUMENT_PLACEHOLDER,
    SECRET_PLACEHOLDER,
    EndCallTool,
    HoldTool,
    HttpTool,
    SendDtmfTool,
    TransferCallTool,
)

from . import tenant_secrets, transfers
from .errors import InvalidField

Tool = EndCallTool | TransferCallTool | HttpTool | SendDtmfTool | HoldTool

URL_CHECK_TIMEOUT_S = 2.0  # resolving a host when it is saved; unresolved in time, the connect-time check decides
PLACEHOLDER = ARGUMENT_PLACEHOLDER  # an argument of the call, filled in by brain
SECRET_REFERENCE = SECRET_PLACEHOLDER  # a tenant secret, filled in by brain
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an RFC 9110 token
# set by the HTTP client from the request itself, or about the connection rather than the request
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
     "proxy-authorization", "proxy-connection"}
)
MAX_PARAMETERS_BYTES = 16_384  # one tool's JSON Schema; 32 tools of it stay well inside a KV value (256 KiB)
MAX_HEADER_VALUE_CHARS = 4096
# name -> the only type that may use it
BUILT_IN_NAMES = {"end_call": "end_call", "transfer_call": "transfer_call", "send_dtmf": "send_dtmf", "hold": "hold"}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but TAB


@dataclass
class Refs:
    """What the pure checks leave to those that need I/O, each with the field it came from."""

    urls: list[tuple[str, str]] = field(default_factory=list)  # (field, the URL's scheme, host and port)
    secrets: list[tuple[str, str]] = field(default_factory=list)  # (field, secret name)
    targets: list[tuple[str, str]] = field(default_factory=list)  # (field, E.164 number or SIP URI)


# ------------------------------------------------------------------ pure checks
def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys included) with the path of where it is."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield path, str(k)
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}.{i}")


def check_text(value: Any, path: str) -> None:
    for where, text in _strings(value, path):
        if "\x00" in text:
            raise InvalidField(where, "must not contain NUL characters")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidField(where, "must be valid Unicode text") from None


def template_parts(text: str) -> tuple[list[str], list[str]]:
    """The ``{param}`` placeholders and ``{{secret:NAME}}`` references in ``text``; ValueError when a brace is
    anything else (brain would send it as it is)."""
    secrets = SECRET_REFERENCE.findall(text)
    rest = SECRET_REFERENCE.sub("", text)
    params = PLACEHOLDER.findall(rest)
    left = PLACEHOLDER.sub("", rest)
    if "{" in left or "}" in left:
        raise ValueError(
            "has a brace that is neither a {param} placeholder (a letter or _, then letters, digits and _) nor a "
            "{{secret:NAME}} reference"
        )
    return params, secrets


def check_parameters(parameters: dict[str, Any], where: str) -> set[str]:
    """``parameters`` must be a JSON Schema of an object; its property names."""
    try:
        size = len(json.dumps(parameters, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        raise InvalidField(where, "must be a JSON Schema (a JSON object)") from None
    if size > MAX_PARAMETERS_BYTES:
        raise InvalidField(where, f"must be at most {MAX_PARAMETERS_BYTES} bytes as JSON")
    if parameters.get("type") != "object":
        raise InvalidField(where, 'must be the JSON Schema of an object ("type": "object")')
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        raise InvalidField(f"{where}.properties", "must be an object mapping each argument to its schema")
    for path, key, value in _refs(parameters, where):
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise InvalidField(path, "only local references (#/...) are allowed")
    try:
        validator_for(parameters).check_schema(parameters)
    except SchemaError as e:
        at = ".".join(str(p) for p in e.path)
        raise InvalidField(f"{where}.{at}" if at else where, f"not a valid JSON Schema: {e.message}") from None
    except RecursionError:
        raise InvalidField(where, "is nested too deeply") from None
    return set(properties)


def _refs(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "$ref":
                yield f"{path}.{k}", k, v
            yield from _refs(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _refs(v, f"{path}.{i}")


def _check_url(tool: HttpTool, where: str, params: set[str], refs: Refs) -> None:
    url = tool.url
    if _CONTROL.search(url) or " " in url:
        raise InvalidField(f"{where}.url", "must not contain spaces, CR, LF or other control characters")
    try:
        placeholders, secrets = template_parts(url)
    except ValueError as e:
        raise InvalidField(f"{where}.url", str(e)) from None
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidField(f"{where}.url", "not a URL") from None
    if "{" in parts.netloc or "}" in parts.netloc:
        raise InvalidField(f"{where}.url", "a placeholder in the host or port is refused: the host must be fixed")
    try:
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise InvalidField(f"{where}.url", "has a port that is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField(f"{where}.url", "must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidField(f"{where}.url", "must not carry credentials: put them in a header as {{secret:NAME}}")
    for name in placeholders:
        if name not in params:
            raise InvalidField(f"{where}.url", f"placeholder {{{name}}} is not a property of parameters")
    refs.secrets.extend((f"{where}.url", s) for s in secrets)
    refs.urls.append((f"{where}.url", urlunsplit(parts._replace(path="/", query="", fragment=""))))


def _check_headers(tool: HttpTool, where: str, params: set[str], refs: Refs) -> None:
    check_headers(tool.headers, where, params, refs)


def check_headers(headers: Mapping[str, str], where: str, params: set[str], refs: Refs) -> None:
    """Header names and values of a tool (or an MCP server, with no ``params``) at ``where``; the secrets they name
    go to ``refs``."""
    seen: set[str] = set()
    for name, value in headers.items():
        at = f"{where}.headers.{name}"
        if not HEADER_NAME.fullmatch(name):
            raise InvalidField(f"{where}.headers", "a header name must be an HTTP token (letters, digits, -, _ ...)")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidField(at, "is set by the HTTP client and cannot be configured")
        if name.lower() in seen:
            raise InvalidField(at, "is given twice (header names ignore case)")
        seen.add(name.lower())
        if _CONTROL.search(value):
            raise InvalidField(at, "must not contain CR, LF or other control characters")
        if len(value) > MAX_HEADER_VALUE_CHARS:
            raise InvalidField(at, f"must be at most {MAX_HEADER_VALUE_CHARS} characters")
        try:
            placeholders, secrets = template_parts(value)
        except ValueError as e:
            raise InvalidField(at, str(e)) from None
        for p in placeholders:
            if p not in params:
                raise InvalidField(at, f"placeholder {{{p}}} is not a property of parameters")
        refs.secrets.extend((at, s) for s in secrets)


def _check_response_fields(tool: HttpTool, where: str) -> None:
    for i, path in enumerate(tool.response_fields):
        if not path or len(path) > 200 or _CONTROL.search(path) or any(not p for p in path.split(".")):
            raise InvalidField(f"{where}.response_fields.{i}", "must be a dot path of 1 to 200 characters (a.b.c)")


def check_tools(tools: Sequence[Tool]) -> Refs:
    """Every check that needs no I/O; what is left to check with the tenant's data and the network."""
    refs = Refs()
    names: dict[str, int] = {}
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        check_text(tool.model_dump(mode="json"), where)
        key = tool.name.lower()
        if key in names:
            raise InvalidField(f"{where}.name", f"tools.{names[key]} has this name already (names ignore case)")
        names[key] = i
        if BUILT_IN_NAMES.get(key, tool.type) != tool.type:
            raise InvalidField(f"{where}.name", f"{key} is the name of the built-in {key} tool")
        if isinstance(tool, TransferCallTool):
            destinations: set[str] = set()
            for j, d in enumerate(tool.destinations):
                if d.name.strip().lower() in destinations:
                    raise InvalidField(f"{where}.destinations.{j}.name", "another destination has this name")
                destinations.add(d.name.strip().lower())
                refs.targets.append((f"{where}.destinations.{j}.target", d.target))
        elif isinstance(tool, HoldTool):
            if not tool.line.strip() or _CONTROL.search(tool.line):
                raise InvalidField(f"{where}.line", "must be words to say (no line breaks or control characters)")
        elif isinstance(tool, HttpTool):
            params = check_parameters(tool.parameters, f"{where}.parameters")
            _check_url(tool, where, params, refs)
            _check_headers(tool, where, params, refs)
            _check_response_fields(tool, where)
    return refs


# ------------------------------------------------------------------ checks with I/O
async def check_egress(policy: EgressPolicy, field: str, url: str) -> None:
    """An early error for a tenant's URL that reaches an internal address now (the connect-time guard where the
    URL is used is what enforces it); a name that does not resolve in time is left to that guard."""
    try:
        async with asyncio.timeout(URL_CHECK_TIMEOUT_S):
            await check_url(url, policy)
    except BlockedAddress:
        # the resolved address is not named: it would tell a tenant what internal names resolve to
        raise InvalidField(
            field, "reaches an internal address; an operator must allow-list its host:port (EGRESS_ALLOW)"
        ) from None
    except TimeoutError:
        pass


async def check(policy: EgressPolicy, conn: asyncpg.Connection, tenant_id: str, tools: Sequence[Tool]) -> None:
    """Everything above, for the tools of a version of an agent of ``tenant_id``; the secrets they name stay until
    the caller's transaction ends (a delete waits for it, then finds the reference)."""
    refs = check_tools(tools)
    if refs.urls:
        outcomes = await asyncio.gather(*(check_egress(policy, f, u) for f, u in refs.urls), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    for where, name in _first_use(refs.secrets):
        await tenant_secrets.check_reference(conn, tenant_id, where, name)
    if refs.targets:
        patterns = await transfers.allowed_targets(conn, tenant_id)
        for where, target in refs.targets:
            if not transfers.permits(patterns, target):
                raise InvalidField(
                    where,
                    "is not on this tenant's transfer allow-list" if patterns
                    else "is not permitted: this tenant's transfer allow-list is empty",
                )


def _first_use(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(field, name) pairs, one per name: where it is first used."""
    seen: dict[str, str] = {}
    for where, name in pairs:
        seen.setdefault(name, where)
    return [(where, name) for name, where in seen.items()]
