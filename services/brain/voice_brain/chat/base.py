"""The chat-model role: what brain needs of any LLM, and the one base class that owns the shared concerns.

An adapter (one vendor protocol) subclasses ``ChatModel`` and implements ``_stream`` only: a ``ChatRequest`` in,
``Delta``s out. The base applies the limits (first token, whole completion), counts tokens and failures,
observes the time to the first token and marks the current span; adapters carry no timeout, metric or tracing
code of their own.

A ``ChatModel`` is bound to one endpoint and one model name. A ``ChatModelProvider`` builds them and owns the
clients it keeps per endpoint; providers are found by name (``registry.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from opentelemetry import trace
from voice_runtime import metrics
from voice_runtime.egress import EgressPolicy


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""  # the provider's id, when it gives one (brain names its calls itself)
    malformed: bool = False  # the arguments were not a JSON object


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one completion as the endpoint reported them."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the completion: text as it streams, tool calls once complete, usage at the end (when the
    endpoint reports it)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: Sequence[Mapping[str, Any]]
    temperature: float = 0.6
    max_tokens: int = 160
    tools: Sequence[Mapping[str, Any]] = ()  # OpenAI function-tool schemas


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a model is served, the key that endpoint is called with ("": none), and the egress guard every
    connection to it must go through (``voice_runtime.egress``; None only for the operator's own endpoint)."""

    base_url: str
    api_key: str = field(default="", repr=False)
    egress: EgressPolicy | None = None


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Bounds of one completion. The first token bounds dead air before anything is said; the total bounds a
    reply that streams too slowly to finish."""

    first_token_timeout_s: float = 8.0
    total_timeout_s: float = 30.0


class ChatModelError(Exception):
    """The completion failed (endpoint error, protocol error or a limit); the reply apologizes."""


class ChatTimeout(ChatModelError):
    pass


class ChatModel(ABC):
    """One model on one endpoint. ``stream`` is what callers use; adapters implement ``_stream``."""

    provider: ClassVar[str] = "unknown"  # a low-cardinality name for span attributes and logs

    def __init__(self, model: str, limits: ChatLimits, *, service: str = "brain") -> None:
        self.model = model
        self.limits = limits
        self.service = service

    @abstractmethod
    def _stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        """The completion as deltas (an async generator). Raise on any failure; the base bounds time."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        """The completion's deltas within ``limits``. Every failure surfaces as ``ChatModelError``
        (``ChatTimeout`` for a limit); cancellation passes through. Close the iterator when done early."""
        span = trace.get_current_span()
        span.set_attribute("llm.provider", self.provider)
        span.set_attribute("llm.model", self.model)
        limits = self.limits
        started = time.monotonic()
        deadline = started + limits.total_timeout_s
        got_token = False
        it = self._stream(request)
        try:
            while True:
                remaining = deadline - time.monotonic()
                first = not got_token and limits.first_token_timeout_s < remaining
                try:
                    async with asyncio.timeout(max(limits.first_token_timeout_s if first else remaining, 0.0)):
                        delta = await anext(it)
                except StopAsyncIteration:
                    return
                except TimeoutError as e:
                    raise ChatTimeout(f"no first token within {limits.first_token_timeout_s:g} s" if first
                                      else f"completion not done within {limits.total_timeout_s:g} s") from e
                if delta.text:
                    metrics.LLM_TOKENS.labels(self.service).inc()
                    if not got_token:
                        got_token = True
                        ttft = time.monotonic() - started
                        span.add_event("first_token")
                        metrics.STAGE_SECONDS.labels(self.service, "llm_first_token").observe(ttft)
                        metrics.LLM_TTFT.labels(self.service).observe(ttft)
                yield delta
        except ChatModelError as e:
            self._failed(span, e)
            raise
        except Exception as e:
            self._failed(span, e)
            raise ChatModelError(f"{self.provider}: {e!r}"[:300]) from e
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    async def warm(self, request: ChatRequest) -> None:
        """Have the endpoint evaluate ``request``'s prompt, asking for one token and using nothing: a server that
        reuses the longest prompt prefix it evaluated before (llama.cpp) then answers a later request that begins
        with these messages without evaluating them again. Bounded by the total limit; any failure raises
        ``ChatModelError``. Not a completion: no token or time-to-first-token metric counts it."""
        it = self._stream(dataclasses.replace(request, max_tokens=1, temperature=0.0))
        try:
            async with asyncio.timeout(self.limits.total_timeout_s):
                async for _ in it:
                    pass
        except TimeoutError as e:
            raise ChatTimeout(f"prompt not evaluated within {self.limits.total_timeout_s:g} s") from e
        except ChatModelError:
            raise
        except Exception as e:
            raise ChatModelError(f"{self.provider}: {e!r}"[:300]) from e
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    def _failed(self, span: trace.Span, e: Exception) -> None:
        metrics.ERRORS.labels(self.service, "llm").inc()
        span.record_exception(e)


class ChatModelProvider(Protocol):
    """Builds ``ChatModel``s for endpoints (keeping a client per endpoint as it sees fit)."""

    name: str

    def model(self, endpoint: Endpoint, model: str) -> ChatModel:
        """The model ``model`` served at ``endpoint``: with ``endpoint.egress`` set, every connection (redirects
        included) goes through that guard (``voice_runtime.egress.guarded_client`` for an httpx-based SDK)."""
        ...

    async def aclose(self) -> None:
        """Close every client kept (the service is stopping)."""
        ...
