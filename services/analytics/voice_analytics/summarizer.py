"""The post-call summary from the agent's own model, or the extractive one when the model cannot give one.

The model is the one the agent talks with (``voice_runtime.llm_endpoints``: the platform's endpoint and key, or the
agent's own endpoint with its tenant's secret, reached only through the egress guard), called once, not streamed,
through the ``openai`` client: the bounded prompt of ``summary.py``, ``max_tokens``, ``temperature`` and one
deadline (``timeout_s``) over the whole request, no retries. Any failure (no key to be had, a refused address, an
HTTP error, the deadline) or an unusable answer gives the extractive summary, with the reason recorded (a short
description of the failure: never transcript text, never a key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai import AsyncOpenAI, Timeout, omit
from prometheus_client import Counter
from voice_runtime.egress import guarded_client
from voice_runtime.llm_endpoints import AgentEndpoints, EndpointRefused, LlmEndpoint, refusal_reason
from voice_runtime.logging import get_logger, safe_error
from voice_schemas.agent import LlmSettings

from . import extractive
from .summary import Line, Summary, Unusable, messages_of, parse_answer

log = get_logger(__name__)

SUMMARIES = Counter("voice_analytics_summaries_total", "Post-call summaries stored, by source", ["source"])
CONNECT_TIMEOUT_S = 3.0
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class SummaryLimits:
    timeout_s: float = 20.0
    max_tokens: int = 300
    temperature: float = 0.2
    transcript_chars: int = 6000


class Summarizer:
    def __init__(self, endpoints: AgentEndpoints, default_model: str, limits: SummaryLimits) -> None:
        self.endpoints = endpoints
        self.default_model = default_model
        self.limits = limits

    async def summarize(self, tenant_id: str, llm: LlmSettings, lines: Sequence[Line], end_reason: str | None,
                        caller_rolling: Sequence[float]) -> Summary:
        """The model's summary, or the extractive one with the reason the model's was not used."""
        if not any(ln.text.strip() for ln in lines):
            return extractive.summarize(lines, end_reason, caller_rolling, "no transcript to summarise")
        try:
            endpoint = await self.endpoints.for_agent(tenant_id, llm)
            content = await self.complete(endpoint, llm.model or self.default_model,
                                          messages_of(lines, end_reason, self.limits.transcript_chars))
            return parse_answer(content)
        except Exception as e:  # every failure of the model is the fallback's cue
            reason = reason_of(e, self.limits.timeout_s)
            log.warning("summary_model_failed", reason=reason, error_type=type(e).__name__)
        return extractive.summarize(lines, end_reason, caller_rolling, reason)

    async def complete(self, endpoint: LlmEndpoint, model: str, messages: list[dict[str, str]]) -> str | None:
        kw: dict[str, Any] = {}
        if endpoint.egress is not None:
            kw["http_client"] = guarded_client(endpoint.egress, follow_redirects=True)
        client = AsyncOpenAI(
            # the SDK refuses to start without a key; a keyless endpoint's request omits the header
            base_url=endpoint.base_url, api_key=endpoint.api_key or "unused", max_retries=0,
            timeout=Timeout(self.limits.timeout_s, connect=CONNECT_TIMEOUT_S), **kw,
        )
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                r = await client.chat.completions.create(
                    model=model, messages=cast(Any, messages), max_tokens=self.limits.max_tokens,
                    temperature=self.limits.temperature, stream=False,
                    extra_headers=None if endpoint.api_key else {"Authorization": omit},
                )
        finally:
            await client.close()
        return r.choices[0].message.content if r.choices else None


def reason_of(e: BaseException, timeout_s: float) -> str:
    """Why the model's summary was not used, in a few words (no answer text, no key)."""
    if isinstance(e, Unusable):
        reason = f"unusable answer: {e}"
    elif isinstance(e, TimeoutError | openai.APITimeoutError):
        reason = f"no answer within {timeout_s:g} s"
    elif isinstance(e, openai.APIStatusError):
        reason = f"the endpoint answered HTTP {e.status_code}"
    elif isinstance(e, EndpointRefused | openai.APIConnectionError):
        reason = f"endpoint unreachable: {refusal_reason(e)}"
    else:
        reason = f"model call failed: {safe_error(e, 120)}"
    return reason[:MAX_REASON_CHARS]
