"""An agent's tools as the model sees them, and running them: no bus, no history (the service does that).

- ``model_tools``: the OpenAI function schemas of an agent's tools. ``end_call`` is always offered (the agent's own
  ``end_call`` entry only changes its description); ``transfer_call`` takes one of its destinations by name (the
  model never sees or invents a number); ``send_dtmf`` takes the keys (checked against the tool's ``max_digits``),
  ``hold`` an optional number of seconds up to the tool's ``max_hold_s``.
- ``check_arguments``: the arguments against the tool's JSON Schema before anything runs; a refusal goes back to
  the model as a tool error, never crashes the turn.
- ``HttpTools``: a tenant's HTTP tool called through the egress guard (no internal addresses, on every redirect
  too), ``{param}`` placeholders filled from the arguments (URL-encoded in the URL), ``{{secret:NAME}}`` from the
  tenant's sealed secrets (never shown to the model, never logged), the rest of the arguments as the JSON body or the
  query, the response read up to ``max_response_bytes`` and cut to ``response_fields``.
- ``ToolOutcome.for_model``: what the model reads back, bounded (``RESULT_CHARS``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from voice_runtime.egress import EgressPolicy, guarded_client
from voice_schemas.agent import (
    ARGUMENT_PLACEHOLDER,
    SECRET_PLACEHOLDER,
    AgentConfig,
    HoldTool,
    HttpTool,
    SendDtmfTool,
    ToolSpec,
    TransferCallTool,
)

from .conversation import END_CALL, END_CALL_TOOL

RESULT_CHARS = 1_500  # what the model reads of one result (the history cuts a message at 2,000)
# one pass over a template: group 1 a secret's name, group 2 an argument's (the patterns control-api checks)
_PLACEHOLDER = re.compile(f"{SECRET_PLACEHOLDER.pattern}|{ARGUMENT_PLACEHOLDER.pattern}")

SecretReader = Callable[[str, str], Awaitable[str]]  # (tenant id, secret name) -> value


class ToolFailed(Exception):
    """The tool could not do its work; the message goes to the model (no secret values, no internal detail)."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    ok: bool
    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0

    def for_model(self) -> str:
        body = {"ok": True, "result": self.result} if self.ok else {"ok": False, "error": self.error}
        text = json.dumps(body, ensure_ascii=False, default=str)
        return text if len(text) <= RESULT_CHARS else text[: RESULT_CHARS - 1] + "…"


def tool_parameters(tool: ToolSpec) -> dict[str, Any]:
    """The JSON Schema of a tool's arguments, as the model sees it and as its calls are checked."""
    if isinstance(tool, HttpTool):
        return tool.parameters
    if isinstance(tool, TransferCallTool):
        return {"type": "object", "required": ["destination"], "properties": {
            "destination": {"type": "string", "enum": [d.name for d in tool.destinations],
                            "description": "Who to transfer the caller to"}}}
    if isinstance(tool, SendDtmfTool):
        return {"type": "object", "required": ["digits"], "properties": {
            "digits": {"type": "string", "pattern": f"^[0-9*#A-D]{{1,{tool.max_digits}}}$",
                       "description": "The keys to press, in order: 0-9, * and # (A-D on special lines), "
                                      "no spaces, e.g. '1' or '4721#'"}}}
    if isinstance(tool, HoldTool):
        return {"type": "object", "properties": {
            "seconds": {"type": "integer", "minimum": 5, "maximum": tool.max_hold_s,
                        "description": f"How long the hold may last at most (default {tool.max_hold_s})"}}}
    params: dict[str, Any] = END_CALL_TOOL["function"]["parameters"]
    return params


def model_tools(agent: AgentConfig) -> tuple[dict[str, Any], ...]:
    """The function schemas sent with every completion of this agent."""
    out = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                             "parameters": tool_parameters(t)}} for t in agent.tools]
    has_end = any(t.type == "end_call" for t in agent.tools)
    if not has_end:
        out.insert(0, END_CALL_TOOL)
    return tuple(out)


def check_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """``ToolFailed`` naming the first problems when ``arguments`` do not satisfy ``schema``."""
    try:
        validator = validator_for(dict(schema))(dict(schema))  # the dialect its $schema names (2020-12 without one)
        errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
    except SchemaError as e:  # control-api checks schemas when they are saved; an old version may still hold one
        raise ToolFailed("the tool's parameter schema is invalid") from e
    if errors:
        parts = [f"{'/'.join(map(str, e.path)) or '(arguments)'}: {e.message}"[:200] for e in errors[:3]]
        raise ToolFailed("invalid arguments: " + "; ".join(parts))


def transfer_target(tool: TransferCallTool, arguments: Mapping[str, Any]) -> str:
    name = arguments.get("destination")
    for d in tool.destinations:
        if d.name == name:
            return d.target
    raise ToolFailed(f"unknown destination {name!r}; choose one of: {', '.join(d.name for d in tool.destinations)}")


def pick_fields(data: Any, paths: list[str]) -> Any:
    """``{path: value}`` for each dot path found in ``data`` (list items by index); the data itself for no paths."""
    if not paths:
        return data
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = data
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            out[path] = node
    return out


def _fill(template: str, values: Mapping[str, Any], secrets: Mapping[str, str], used: set[str], *,
          url: bool) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1):
            value = secrets[m.group(1)]
            return quote(value, safe="") if url else value
        name = m.group(2)
        if name not in values:
            raise ToolFailed(f"missing argument {name!r}")
        used.add(name)
        raw = values[name]
        text = raw if isinstance(raw, str) else json.dumps(raw)
        if url:
            return quote(text, safe="")
        if "\r" in text or "\n" in text:
            raise ToolFailed(f"argument {name!r} cannot go into a header (line break)")
        return text

    return _PLACEHOLDER.sub(one, template)


def _query_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


class HttpTools:
    """Calls tenants' HTTP tools. One guarded client for all (its pool is shared; each request has its timeout)."""

    def __init__(self, egress: EgressPolicy, secret: SecretReader) -> None:
        self._client = guarded_client(egress, follow_redirects=True, max_redirects=3)
        self._secret = secret

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, tenant_id: str, tool: HttpTool, arguments: Mapping[str, Any]) -> Any:
        names = {m.group(1) for t in (tool.url, *tool.headers.values()) for m in _PLACEHOLDER.finditer(t)
                 if m.group(1)}
        secrets: dict[str, str] = {}
        for name in sorted(names):
            try:
                secrets[name] = await self._secret(tenant_id, name)
            except Exception as e:
                raise ToolFailed(f"the tool's secret {name!r} is not available") from e
        used: set[str] = set()
        url = _fill(tool.url, arguments, secrets, used, url=True)
        headers = {k: _fill(v, arguments, secrets, used, url=False) for k, v in tool.headers.items()}
        rest = {k: v for k, v in arguments.items() if k not in used}
        kw: dict[str, Any] = {}
        if tool.method in ("GET", "DELETE"):
            kw["params"] = {k: _query_value(v) for k, v in rest.items()}
        elif rest:
            kw["json"] = rest
        try:
            async with self._client.stream(tool.method, url, headers=headers, timeout=tool.timeout_s, **kw) as r:
                body = bytearray()
                truncated = False
                async for piece in r.aiter_bytes():
                    body += piece
                    if len(body) > tool.max_response_bytes:
                        truncated = True
                        del body[tool.max_response_bytes:]
                        break
                status, ctype = r.status_code, r.headers.get("content-type", "")
        except httpx.TimeoutException as e:
            raise ToolFailed(f"no answer within {tool.timeout_s:g} s") from e
        except httpx.HTTPError as e:
            raise ToolFailed(f"request failed: {type(e).__name__}") from e
        text = body.decode("utf-8", "replace")
        if status >= 400:
            raise ToolFailed(f"HTTP {status}: {text[:200]}")
        data: Any = text
        if not truncated and ("json" in ctype or text[:1] in "{["):
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = text
        if tool.response_fields and not isinstance(data, str):
            return pick_fields(data, tool.response_fields)
        return data


async def timed(run: Callable[[], Awaitable[Any]]) -> ToolOutcome:
    """Run a tool: its outcome (a ``ToolFailed`` becomes an error the model reads) and how long it took."""
    started = time.monotonic()
    try:
        result = await run()
    except ToolFailed as e:
        return ToolOutcome(False, error=str(e), duration_ms=round((time.monotonic() - started) * 1000, 1))
    return ToolOutcome(True, result=result, duration_ms=round((time.monotonic() - started) * 1000, 1))


__all__ = ["END_CALL", "HttpTools", "ToolFailed", "ToolOutcome", "check_arguments", "model_tools", "pick_fields",
           "timed", "tool_parameters", "transfer_target"]
