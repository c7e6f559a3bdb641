"""Settings of the analytics service."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings, DatabaseSettings, EgressSettings, SecretsSettings

from .recording import RecorderSettings


class AnalyticsSettings(RecorderSettings, DatabaseSettings, SecretsSettings, EgressSettings, CommonSettings):
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
