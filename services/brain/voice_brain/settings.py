"""Settings of the brain service."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.embeddings import EmbeddingSettings
from voice_runtime.settings import CommonSettings, EgressSettings, LlmSettings, SecretsSettings


class BrainSettings(LlmSettings, SecretsSettings, EgressSettings, EmbeddingSettings, CommonSettings):
    """``EGRESS_ALLOW`` and ``SECRETS_KEY`` are parsed when the service is built (``BrainService.__init__``): a
    malformed value stops start-up, not an agent's first turn."""

    service_name: str = "brain"
    http_port: int = Field(8083, validation_alias=AliasChoices("BRAIN_HTTP_PORT", "HTTP_PORT"))
    llm_provider: str = Field("openai", description="Chat-model provider (voice_brain.chat.registry); "
                              "openai = any OpenAI-compatible endpoint")
    llm_first_token_timeout_s: float = Field(8.0, gt=0, description="No token by then: apologize")
    llm_total_timeout_s: float = Field(30.0, gt=0, description="Upper bound of one completion")
    max_history_messages: int = Field(40, ge=2, description="Recent messages kept per call and sent in every "
                                      "prompt; older ones live on in a bounded summary")
    apology: str = "Sorry, I'm having trouble answering right now. Could you say that again?"

    # knowledge retrieval (voice_brain.knowledge): reads the chunks control-api stores; off without DATABASE_URL
    database_url: str | None = Field(
        None, description="PostgreSQL DSN of the platform (the one control-api uses), read for knowledge "
        "retrieval only; unset: agents' knowledge bases are not retrieved (one warning at start)",
    )
    knowledge_timeout_s: float = Field(
        0.15, gt=0, le=5.0, description="Longest a turn waits for its knowledge (the query, and the embedding of "
        "the caller's words with EMBEDDINGS_BASE_URL); slower: the reply goes without it",
    )
    knowledge_pool_max: int = Field(4, ge=1, le=50, description="PostgreSQL connections per replica for retrieval")
