"""Typed settings from the environment, one object per service (pydantic-settings).

``CommonSettings`` holds what every service needs (NATS, logging, HTTP, telemetry, shutdown). Database,
LLM, Twilio and bootstrap settings are mixins a service adds only when it uses them, so no service can
read a secret it does not need (the environment of every pod may hold all of them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from voice_schemas.streams import REPLICA_COUNTS, Placement

from .egress import EgressPolicy
from .secretbox import SecretBox, parse_key


class _Settings(BaseSettings):
    # a refused value (a key, a token) is never quoted back in the error
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True)


class CommonSettings(_Settings):
    """What every service reads. Service settings subclass this (and the mixins they need)."""

    service_name: str = "voice"
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma separated")
    nats_replicas: int = Field(
        1, description="Servers that keep a copy of every stream and KV bucket: 1 (one server), 3 or 5 (a NATS "
        "cluster of at least that many). Raised on existing streams at start, never lowered"
    )
    nats_audio_storage: Literal["file", "memory"] = Field(
        "file", description="Storage of the AUDIO stream (the durable facts are always on file)"
    )
    bus_write_gap_ms: float = Field(
        1.0, ge=0.0, le=20.0, description="A busy service writes to NATS at most once per this many ms, everything "
        "published meanwhile in one write (an idle one writes at once); 0: a write per event-loop pass"
    )
    otel_exporter_otlp_endpoint: str | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    log_personal_data: bool = Field(False, description="Keep transcript text / numbers in logs (dev only)")
    log_redaction_key: SecretStr | None = Field(
        None, description="Per-deployment secret: personal values in logs become keyed hashes (same value, same "
        "tag). Unset: they are dropped."
    )
    http_host: str = "127.0.0.1"
    http_port: int = 0
    shutdown_grace_s: float = Field(20.0, description="Time allowed to finish in-flight work on stop")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The event loop the service runs on: uvloop (libuv; much less CPU per socket event "
        "and timer, the per-frame cost of every call's audio) or Python's own asyncio loop"
    )
    loop_lag_interval_ms: int = Field(
        20, ge=0, le=1000, description="How often the event loop's lag is measured (voice_event_loop_lag_seconds: "
        "how late a timer of this length runs); 0: not measured"
    )
    default_tenant_id: str = "default"
    default_agent_id: str = "default-agent"

    @field_validator("nats_replicas")
    @classmethod
    def _nats_replicas(cls, value: int) -> int:
        if value not in REPLICA_COUNTS:
            raise ValueError(f"NATS_REPLICAS must be one of {', '.join(map(str, REPLICA_COUNTS))}")
        return value

    def placement(self) -> Placement:
        """How this deployment keeps the streams and buckets (see ``voice_schemas.streams.Placement``)."""
        return Placement(replicas=self.nats_replicas, audio_storage=self.nats_audio_storage)


class DatabaseSettings(_Settings):
    """PostgreSQL, for the services that own records (control-api, analytics)."""

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/voice_platform", description="PostgreSQL DSN"
    )


class LlmSettings(_Settings):
    """The platform's own OpenAI-compatible endpoint and its key (brain)."""

    llm_base_url: str = Field("http://127.0.0.1:8090/v1", description="OpenAI-compatible endpoint")
    llm_api_key: SecretStr = Field(SecretStr("sk-local"), description="API key for LLM_BASE_URL")
    llm_model: str = Field("smollm2", description="Default model name")


class TwilioSettings(_Settings):
    """Twilio webhooks and media streams (ingress)."""

    public_base_url: str = Field("http://127.0.0.1:8080", description="Public URL Twilio reaches ingress at")
    twilio_auth_token: SecretStr | None = None


class BootstrapSettings(_Settings):
    """The first admin key (control-api)."""

    bootstrap_admin_key: SecretStr | None = None


class SecretsSettings(_Settings):
    """The key that seals tenant secrets (control-api, and the services that dial tenant endpoints)."""

    secrets_key: SecretStr | None = Field(
        None, description="32 random bytes, base64 (openssl rand -base64 32). Unset: tenant secrets are refused"
    )

    @field_validator("secrets_key")
    @classmethod
    def _secrets_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key(value.get_secret_value())  # refused at start-up, without quoting the value
        return value

    def secret_box(self) -> SecretBox | None:
        return SecretBox(parse_key(self.secrets_key.get_secret_value())) if self.secrets_key else None


class EgressSettings(_Settings):
    """Which internal host:port entries tenant-controlled URLs may reach (every other internal address is
    refused; see voice_runtime.egress)."""

    egress_allow: str = Field("", description="Comma-separated host:port entries tenant URLs may reach")

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow(cls, value: str) -> str:
        EgressPolicy.parse(value)
        return value

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.parse(self.egress_allow)
