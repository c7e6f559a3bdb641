"""Settings of the control-api service."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from voice_runtime.calltoken import CallTokenSettings
from voice_runtime.settings import (
    BootstrapSettings,
    CommonSettings,
    DatabaseSettings,
    EgressSettings,
    SecretsSettings,
)

from .proxies import ForwardedHeader, TrustedProxies


class ControlApiSettings(
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
    bootstrap_tenant_name: str = Field("Default", description="Name of the tenant BOOTSTRAP_ADMIN_KEY creates")

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

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        TrustedProxies.parse(value)
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
