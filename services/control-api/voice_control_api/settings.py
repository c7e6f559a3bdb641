"""Settings of the control-api service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from voice_runtime.calltoken import CallTokenSettings
from voice_runtime.embeddings import EmbeddingSettings
from voice_runtime.recordings import RecordingStoreSettings
from voice_runtime.settings import (
    BootstrapSettings,
    CommonSettings,
    DatabaseSettings,
    EgressSettings,
    SecretsSettings,
)

from .fields import check_email
from .proxies import ForwardedHeader, TrustedProxies


class ControlApiSettings(
    RecordingStoreSettings, EmbeddingSettings,
    DatabaseSettings, BootstrapSettings, SecretsSettings, EgressSettings, CallTokenSettings, CommonSettings
):
    # an error names the setting and what is wrong, never the value it refused (keys, DSNs with passwords)
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    service_name: str = "control-api"
    http_port: int = Field(8000, validation_alias=AliasChoices("CONTROL_API_HTTP_PORT", "HTTP_PORT"))

    # identity
    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 signing secret for console access tokens. Unset: a random secret is generated "
        "once and kept in PostgreSQL, so every replica shares it.",
    )
    access_token_ttl_s: int = Field(900, ge=30, le=86400, description="Lifetime of a console access token")
    refresh_token_ttl_s: int = Field(
        7 * 86400, ge=300, le=90 * 86400, description="Lifetime of a refresh token (rotated on each use)"
    )
    password_hash_time_cost: int = Field(3, ge=1, le=20, description="argon2id passes")
    password_hash_memory_kib: int = Field(65536, ge=8192, le=1048576, description="argon2id memory per hash")
    bootstrap_tenant_name: str = Field(
        "Default", description="Name of the first tenant (of BOOTSTRAP_ADMIN_KEY, the first admin, the default agent)"
    )

    # first run: on a database without any console user, the first platform admin; and the default agent
    bootstrap_admin_email: str = Field(
        "admin@example.com", description="Email of the first platform admin user, created on a database without users"
    )
    bootstrap_admin_password: SecretStr | None = Field(
        None, description="Password of the first admin (8+ characters). Unset: see BOOTSTRAP_ADMIN_PASSWORD_FILE"
    )
    bootstrap_admin_password_file: Path | None = Field(
        None,
        description="Without BOOTSTRAP_ADMIN_PASSWORD, a random password is generated and written to this file "
        "(0600), never logged; removed once the admin changes it. Unset too: no admin user is made (sign in to the "
        "console with BOOTSTRAP_ADMIN_KEY instead)",
    )
    bootstrap_default_agent: bool = Field(
        True,
        description="Store the default agent (DEFAULT_AGENT_ID in DEFAULT_TENANT_ID) as an editable agent when it "
        "has never existed",
    )
    bootstrap_default_agent_spec: Path | None = Field(
        None,
        description="A JSON file the default agent is seeded from when it is first stored: {\"agent\": agent "
        "fields, \"knowledge_base\": {\"name\", \"description\", \"documents\": [{\"filename\", \"text\"}]}} "
        "(`make run` writes the demo restaurant's here; usecases.default_agent_spec)",
    )

    # web console
    console_session_ttl_s: int = Field(
        12 * 3600, ge=300, le=30 * 86400, description="How long a console sign-in lasts (the cookie and the session)"
    )
    console_secure_cookies: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Secure flag of the console's cookies. auto: when the request came over https (directly, or "
        "X-Forwarded-Proto from a TRUSTED_PROXIES proxy); always behind a TLS-terminating proxy you do not trust "
        "for headers",
    )

    # API behaviour
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS ('*' for any); empty disables CORS"
    )
    rate_limit_per_s: float = Field(
        20.0, ge=0.0, description="Sustained requests per second per credential, per replica; 0 disables"
    )
    rate_limit_burst: int = Field(100, ge=1, description="Requests a credential may burst above the rate")
    db_pool_max: int = Field(10, ge=1, le=200, description="PostgreSQL pool size")
    trusted_proxies: str = Field(
        "",
        description="Comma-separated IP addresses and CIDR networks of the reverse proxies whose forwarded "
        "header names the client (login rate limit per client address); empty: the connection's address",
    )
    forwarded_header: Annotated[ForwardedHeader, BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)] = (
        Field("x-forwarded-for", description="The header the trusted proxies append to: x-forwarded-for or forwarded")
    )

    # config to the data plane
    kv_reconcile_interval_s: float = Field(
        300.0, ge=0.0, description="Periodic full KV resync (anti-entropy); 0 = only at start"
    )

    # text chat (ingress holds the chat; its idle timeout is ingress's CHAT_IDLE_TIMEOUT_S)
    chat_reply_timeout_s: float = Field(
        45.0, gt=0.0, le=120.0, description="How long a chat message (or a new chat's greeting) waits for the agent "
        "before the request answers 504"
    )

    # live feed (server-sent events of live calls) and whisper
    live_feed_max_per_tenant: int = Field(
        50, ge=1, le=10_000, description="Live feeds (SSE connections) open at once per tenant, per replica"
    )
    live_feed_max_per_credential: int = Field(
        5, ge=1, le=1_000, description="Live feeds open at once per API key or console user, per replica"
    )
    live_feed_buffer: int = Field(
        256, ge=8, le=100_000, description="Events a live feed holds for a client that reads slowly; when full the "
        "feed is closed (the client reconnects with Last-Event-ID and misses nothing)"
    )
    live_feed_heartbeat_s: float = Field(
        15.0, gt=0.0, le=300.0, description="A comment line on an idle live feed this often (keeps proxies open)"
    )
    live_feed_max_calls: int = Field(
        200, ge=1, le=5_000, description="Calls a tenant live feed follows at once (beyond this, new calls show "
        "only their lifecycle events)"
    )
    live_feed_resume_window_s: float = Field(
        3600.0, gt=0.0, le=7 * 86400, description="A tenant feed resumed with Last-Event-ID follows the tenant's "
        "calls live now or ended within this window"
    )
    whisper_max_chars: int = Field(1_000, ge=1, le=1_000, description="Longest whisper text accepted")

    # knowledge bases (the EMBEDDINGS_* settings, shared with brain, add vectors to the chunks)
    knowledge_max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024, description="Largest knowledge document upload (413 above)"
    )
    knowledge_chunk_chars: int = Field(800, ge=200, le=4000, description="Longest chunk of a knowledge document")
    knowledge_chunk_overlap: int = Field(
        150, ge=0, le=1000, description="Characters a chunk repeats of the one before (under half a chunk)"
    )
    knowledge_max_chunks: int = Field(
        5_000, ge=1, le=100_000, description="Chunks one document may make (a longer one is refused: split it)"
    )

    @field_validator("bootstrap_admin_email")
    @classmethod
    def _admin_email(cls, value: str) -> str:
        return check_email(value)

    @field_validator("bootstrap_admin_password")
    @classmethod
    def _admin_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() and len(value.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        TrustedProxies.parse(value)
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
