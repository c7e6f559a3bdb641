"""Settings of the brain service."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from voice_runtime.egress import EgressPolicy
from voice_runtime.secretbox import parse_key
from voice_runtime.settings import CommonSettings, EgressSettings, LlmSettings, SecretsSettings


class BrainSettings(LlmSettings, SecretsSettings, EgressSettings, CommonSettings):
    service_name: str = "brain"
    http_port: int = Field(8083, validation_alias=AliasChoices("BRAIN_HTTP_PORT", "HTTP_PORT"))
    llm_provider: str = Field("openai", description="Chat-model provider (voice_brain.chat.registry); "
                              "openai = any OpenAI-compatible endpoint")
    llm_first_token_timeout_s: float = Field(8.0, gt=0, description="No token by then: apologize")
    llm_total_timeout_s: float = Field(30.0, gt=0, description="Upper bound of one completion")
    max_history_messages: int = Field(40, ge=2, description="Recent messages kept per call and sent in every "
                                      "prompt; older ones live on in a bounded summary")
    apology: str = "Sorry, I'm having trouble answering right now. Could you say that again?"

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow(cls, v: str) -> str:
        EgressPolicy.parse(v)  # refuse a malformed allow-list at start-up, not at the first agent's turn
        return v

    @field_validator("secrets_key")
    @classmethod
    def _secrets_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_key(v.get_secret_value())
        return v
