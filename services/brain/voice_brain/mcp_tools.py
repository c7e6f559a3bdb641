"""MCP servers as tool sources of an agent (``AgentConfig.mcp_servers``): listing their tools, calling them. No bus,
no history: the service runs a call like any tool (``tool.call`` / ``tool.result`` events, arguments checked against
the schema first, approval, filler, the result stored with the turn).

- Listing: a server's tools are listed (``tools/list``, every page up to ``MAX_LIST_PAGES``) once per agent version
  and server on this replica and kept ``list_ttl_s`` (a failed listing ``FAILURE_TTL_S``), then listed again in the
  background while turns go on with the old listing; at most ``cache_entries`` listings (the least recently used
  dropped first). Turns of the same version share one listing in flight. Only the first listing is waited for, at
  most ``wait_s``; one still running then finishes in the background for the next turn, and ``prefetch`` (when a
  call starts) starts it before the caller has said anything.
- Offered: only the allow-listed tools (``McpServerSpec.allowed_tools``) the server lists, as ``<server>__<tool>``
  (``mcp_function_name``) with the server's input schema (a schema that is not a valid JSON Schema of an object, or
  larger than ``MAX_SCHEMA_BYTES``, leaves the tool out) and the allow-list entry's description, else the server's.
  A name one of the agent's own tools has is left to that tool. A tool the server does not list is not offered; a
  call of a tool not offered is refused before anything is sent (the service finds no tool of that name).
- A call: a session over streamable HTTP through the egress guard (``egress_httpx2``: an internal address is
  refused unless the operator allow-lists it), the header values with the tenant's secrets filled in (never logged,
  never shown to the model), ``tools/call``, closed; all of it within the tool's timeout. Connections are pooled
  across calls (one guarded transport); every HTTP response is read up to ``MAX_RESPONSE_BYTES``.
- Results: ``structuredContent`` when the server gives it, else its text blocks joined (other blocks only named),
  cut at the server's ``max_result_bytes``. ``isError``, a protocol error, a failed connection and a timeout are
  ``ToolFailed`` with a short reason (the server's text, bounded): the model reads it as the tool's error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation, ListToolsResult, TextContent, Tool
from pydantic import ValidationError
from voice_runtime.egress import BlockedAddress, EgressPolicy
from voice_runtime.egress_httpx2 import guarded_transport2
from voice_runtime.logging import get_logger, safe_error
from voice_schemas.agent import SECRET_PLACEHOLDER, AgentConfig, McpServerSpec, ToolBase

from .tools import ToolFailed

log = get_logger(__name__)

SecretReader = Callable[[str, str], Awaitable[str]]  # (tenant id, secret name) -> value

MAX_LIST_PAGES = 10
MAX_SCHEMA_BYTES = 16_384  # one tool's input schema (as an HTTP tool's parameters in control-api)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # one HTTP response of an MCP server (a listing, a result, an event stream)
FAILURE_TTL_S = 30.0  # a server that could not be listed is tried again after this (not on every turn)
ERROR_CHARS = 300  # of a server's error text, for the model
CLIENT_INFO = Implementation(name="voice-brain", version="1")

Key = tuple[str, str, int, str]  # tenant, agent id, agent version, server name


class McpTool(ToolBase):
    """An allowed tool of an MCP server as brain runs it: the function name the model calls, the server's schema,
    and how a call is held (approval, filler: the allow-list entry's)."""

    type: Literal["mcp"] = "mcp"
    server: McpServerSpec
    tool: str  # its name on the server
    parameters: dict[str, Any]
    timeout_s: float
    listed: Tool | None = None  # as the server listed it (the session of a call is told, so it need not list again)


@dataclass(frozen=True, slots=True)
class _Listing:
    tools: dict[str, McpTool]  # function name -> tool
    expires: float  # monotonic seconds


# ------------------------------------------------------------------ bounded HTTP
class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > self._limit:
                raise httpx2.ReadError(f"the MCP server sent more than {self._limit} bytes in one response")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _SessionTransport(httpx2.AsyncBaseTransport):
    """One session's view of the shared guarded transport: responses capped; closing the session's client leaves
    the shared pool open."""

    def __init__(self, shared: httpx2.AsyncBaseTransport, limit: int) -> None:
        self._shared, self._limit = shared, limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._shared.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        response.stream = _CappedStream(stream, self._limit)
        return response

    async def aclose(self) -> None:
        pass


def model_functions(tools: Mapping[str, McpTool]) -> tuple[dict[str, Any], ...]:
    """The function schemas of MCP tools, as sent with a completion (after the agent's own tools)."""
    return tuple({"type": "function", "function": {"name": name, "description": t.description,
                                                   "parameters": t.parameters}} for name, t in tools.items())


# ------------------------------------------------------------------ results and errors
def _leaf(e: BaseException) -> BaseException:
    """The first error inside (nested) exception groups (the MCP client's task groups wrap what failed)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` UTF-8 bytes (an ellipsis when cut)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: max(limit - 3, 0)].decode("utf-8", "ignore") + "…"


def _text(result: CallToolResult) -> str:
    return "\n".join(b.text if isinstance(b, TextContent) else f"[{b.type} content]" for b in result.content)


def result_for_model(result: CallToolResult, limit: int) -> Any:
    """What a call returned, bounded: its structured content, else its text; ``ToolFailed`` for a tool error."""
    if result.is_error:
        raise ToolFailed("the tool reported an error: " + (_cut(_text(result), ERROR_CHARS) or "(no detail)"))
    if result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False, default=str)
        return result.structured_content if len(text.encode("utf-8")) <= limit else _cut(text, limit)
    return _cut(_text(result), limit)


def failure(e: BaseException, timeout_s: float) -> str:
    """Why an MCP operation failed, for the model (and the log): no header, no secret, no resolved address."""
    e = _leaf(e)
    if isinstance(e, ToolFailed):
        return str(e)
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(e, BlockedAddress):
        return "the MCP server is at an internal address that is not allow-listed"
    if isinstance(e, MCPError):
        return "the MCP server refused: " + _cut(e.message, ERROR_CHARS)
    if isinstance(e, httpx2.HTTPError | OSError):
        return f"the MCP server could not be reached ({type(e).__name__})"
    return f"the MCP request failed ({type(e).__name__})"


def _absorb(client: Client, listed: Tool | None) -> None:
    """Tell a fresh session the tool's listing (its output schema, its argument headers) that this replica holds,
    so it does not list the server's tools again after the call (a round trip per call). The session's own
    bookkeeping (not public API): without it, the client lists them itself."""
    absorb = getattr(client.session, "_absorb_tool_listing", None)
    if listed is not None and absorb is not None:
        try:
            absorb(ListToolsResult(tools=[listed.model_copy(deep=True)]), complete=False)
        except Exception as e:  # the package changed its internals: the client lists on its own
            log.info("mcp_listing_not_absorbed", error=safe_error(e, 200))


def _schema_problem(schema: Any) -> str | None:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "not the JSON Schema of an object"
    try:
        if len(json.dumps(schema).encode("utf-8")) > MAX_SCHEMA_BYTES:
            return f"larger than {MAX_SCHEMA_BYTES} bytes"
        validator_for(schema).check_schema(schema)
    except (SchemaError, TypeError, ValueError, RecursionError):
        return "not a valid JSON Schema"
    return None


# ------------------------------------------------------------------ the client
class McpTools:
    """The MCP servers of every agent this replica serves: listings cached, calls through one guarded pool."""

    def __init__(self, egress: EgressPolicy, secret: SecretReader, *, wait_s: float = 2.0,
                 cache_entries: int = 512, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = secret
        self._transport = guarded_transport2(egress)
        for noisy in ("httpx2", "mcp.client"):  # a line per HTTP request and session: kept to warnings
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
        self._wait_s = wait_s
        self._cache_entries = cache_entries
        self._clock = clock
        self._cache: OrderedDict[Key, _Listing] = OrderedDict()
        self._listing: dict[Key, asyncio.Task[_Listing]] = {}

    async def aclose(self) -> None:
        tasks = list(self._listing.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._transport.aclose()

    # ------------------------------------------------------------ listing
    def prefetch(self, agent: AgentConfig) -> None:
        """Start listing the agent's servers that are not cached (nothing waits for it)."""
        for server in agent.mcp_servers:
            self._lookup(agent, server)

    async def tools_for(self, agent: AgentConfig) -> dict[str, McpTool]:
        """The function name -> tool of every allowed tool of the agent's servers, waiting for listings in flight at
        most ``wait_s`` (a server not listed by then offers nothing this time)."""
        if not agent.mcp_servers:
            return {}
        found = [self._lookup(agent, s) for s in agent.mcp_servers]
        pending = {f for f in found if isinstance(f, asyncio.Task)}
        if pending:
            await asyncio.wait(pending, timeout=self._wait_s)
        taken = {t.name.lower() for t in agent.tools} | {"end_call"}
        out: dict[str, McpTool] = {}
        for f in found:
            listing = f if isinstance(f, _Listing) else (
                f.result() if f.done() and not f.cancelled() and f.exception() is None else None)
            for name, tool in (listing.tools if listing is not None else {}).items():
                if name.lower() not in taken:
                    taken.add(name.lower())
                    out[name] = tool
        return out

    def _lookup(self, agent: AgentConfig, server: McpServerSpec) -> _Listing | asyncio.Task[_Listing]:
        """The cached listing (an expired one too, while it is listed again in the background: no turn waits for
        a refresh), else the listing in flight."""
        key = (agent.tenant_id, agent.id, agent.version, server.name)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            if cached.expires > self._clock():
                return cached
        task = self._listing.get(key)
        if task is None:
            task = asyncio.create_task(self._list(agent.tenant_id, server), name=f"mcp-list-{server.name}")
            self._listing[key] = task
            task.add_done_callback(lambda t: self._listed(key, t))
        return cached if cached is not None else task

    def _listed(self, key: Key, task: asyncio.Task[_Listing]) -> None:
        self._listing.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # _list answers a failure with an empty listing: this is the net for a bug
            log.warning("mcp_list_crashed", server=key[3], error=safe_error(error, 200))
            self._cache[key] = _Listing({}, self._clock() + FAILURE_TTL_S)
        else:
            self._cache[key] = task.result()
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    async def _list(self, tenant_id: str, server: McpServerSpec) -> _Listing:
        started = self._clock()
        allowed = {t.name for t in server.allowed_tools}
        listed: dict[str, Any] = {}
        try:
            async with asyncio.timeout(server.timeout_s), self._session(tenant_id, server) as client:
                cursor: str | None = None
                for _ in range(MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    listed.update((t.name, t) for t in page.tools if t.name in allowed)
                    cursor = page.next_cursor
                    if not cursor:
                        break
        except Exception as e:
            log.warning("mcp_list_failed", tenant_id=tenant_id, server=server.name,
                        reason=failure(e, server.timeout_s), error=safe_error(_leaf(e), 200))
            return _Listing({}, started + min(FAILURE_TTL_S, server.list_ttl_s))
        tools: dict[str, McpTool] = {}
        for name, rule in server.function_names().items():
            t = listed.get(rule.name)
            if t is None:
                log.info("mcp_tool_not_listed", tenant_id=tenant_id, server=server.name, tool=rule.name)
                continue
            problem = _schema_problem(t.input_schema)
            if problem is not None:
                log.warning("mcp_tool_schema_refused", tenant_id=tenant_id, server=server.name, tool=rule.name,
                            problem=problem)
                continue
            try:
                tools[name] = McpTool(
                    name=name, description=(rule.description or t.description or t.title or "")[:1024],
                    requires_approval=rule.requires_approval, approval_timeout_s=rule.approval_timeout_s,
                    approval_line=rule.approval_line, filler=rule.filler, filler_after_ms=rule.filler_after_ms,
                    server=server, tool=rule.name, parameters=t.input_schema, listed=t,
                    timeout_s=rule.timeout_s if rule.timeout_s is not None else server.timeout_s,
                )
            except ValidationError as e:  # a name too long for the model (control-api refuses it when saved)
                log.warning("mcp_tool_refused", tenant_id=tenant_id, server=server.name, tool=rule.name,
                            error=safe_error(e, 200))
        return _Listing(tools, started + server.list_ttl_s)

    # ------------------------------------------------------------ calling
    async def call(self, tenant_id: str, tool: McpTool, arguments: Mapping[str, Any]) -> Any:
        """Run ``tool`` (arguments already checked against its schema): the result for the model, bounded;
        ``ToolFailed`` for anything that went wrong."""
        try:
            async with asyncio.timeout(tool.timeout_s), self._session(tenant_id, tool.server) as client:
                _absorb(client, tool.listed)
                result = await client.call_tool(tool.tool, dict(arguments))
        except ToolFailed:
            raise
        except Exception as e:
            raise ToolFailed(failure(e, tool.timeout_s)) from None
        return result_for_model(result, tool.server.max_result_bytes)

    @asynccontextmanager
    async def _session(self, tenant_id: str, server: McpServerSpec) -> AsyncIterator[Client]:
        headers = {k: await self._fill(tenant_id, v) for k, v in server.headers.items()}
        http = httpx2.AsyncClient(transport=_SessionTransport(self._transport, MAX_RESPONSE_BYTES), headers=headers,
                                  timeout=httpx2.Timeout(server.timeout_s), trust_env=False)
        async with http, Client(streamable_http_client(server.url, http_client=http), cache=None,
                                client_info=CLIENT_INFO) as client:
            yield client

    async def _fill(self, tenant_id: str, value: str) -> str:
        names = sorted(set(SECRET_PLACEHOLDER.findall(value)))
        secrets: dict[str, str] = {}
        for name in names:
            try:
                secrets[name] = await self._secret(tenant_id, name)
            except Exception as e:
                raise ToolFailed(f"the MCP server's secret {name!r} is not available") from e
        return SECRET_PLACEHOLDER.sub(lambda m: secrets[m.group(1)], value)


__all__ = ["McpTool", "McpTools", "failure", "model_functions", "result_for_model"]
