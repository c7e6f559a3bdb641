"""Settings of the analytics service."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings, DatabaseSettings, EgressSettings, LlmSettings, SecretsSettings

from .recording import RecorderSettings


class AnalyticsSettings(
    RecorderSettings, DatabaseSettings, LlmSettings, SecretsSettings, EgressSettings, CommonSettings
):
    service_name: str = "analytics"
    http_port: int = Field(8085, validation_alias=AliasChoices("ANALYTICS_HTTP_PORT", "HTTP_PORT"))

    # webhook delivery (voice_analytics.webhooks); needs SECRETS_KEY to open the endpoints' signing secrets
    webhook_retry_scale: float = Field(
        1.0, ge=0.0, le=1.0, description="Multiplies the Standard Webhooks retry schedule (tests compress it)"
    )
    webhook_retry_jitter: float = Field(
        0.1, ge=0.0, le=1.0, description="Random extra delay before a retry, as a fraction of the delay"
    )
    webhook_retry_after_max_s: float = Field(
        36000.0, ge=0.0, description="Longest Retry-After (429/5xx) honoured before the next attempt"
    )
    webhook_timeout_s: float = Field(15.0, gt=0.0, le=120.0, description="Time allowed for one delivery attempt")
    webhook_poll_interval_s: float = Field(
        1.0, gt=0.0, le=60.0, description="How often the delivery worker looks for due deliveries"
    )
    webhook_batch: int = Field(16, ge=1, le=256, description="Deliveries one worker attempts at once")

    # post-call summaries (voice_analytics.summarizer): the agent's model (LLM_BASE_URL / LLM_API_KEY / LLM_MODEL
    # for agents without their own endpoint), extractive when it fails
    summary_llm_base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint for the summaries of agents on the platform's model (default "
        "LLM_BASE_URL; same key and model). `make run` points it at a second embedded server at the lowest "
        "priority, so post-call work never queues live turns behind it",
    )
    summary_settle_s: float = Field(
        3.0, ge=0.0, le=300.0, description="Wait after call.ended before summarising (late turns are recorded first)"
    )
    summary_timeout_s: float = Field(20.0, gt=0.0, le=60.0, description="Time allowed for the summary's completion")
    summary_max_tokens: int = Field(300, ge=32, le=2048, description="Longest summary answer asked of the model")
    summary_temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature of the summary")
    summary_transcript_chars: int = Field(
        6000, ge=500, le=100_000, description="Transcript characters in the prompt (head and tail kept beyond it)"
    )

    def summary_endpoint(self) -> str:
        """Where summaries of agents without their own endpoint go."""
        return self.summary_llm_base_url or self.llm_base_url
