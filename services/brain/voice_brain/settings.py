"""Settings of the brain service."""

from __future__ import annotations

from typing import Literal

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
    # the context sent to the LLM stays bounded, so the first token does not slow down as the call goes on
    max_history_turns: int = Field(10, ge=1, description="Caller turns kept in that window at most")
    max_history_chars: int = Field(4_000, ge=200, description="Characters of text in that window at most")
    history_trim_to: float = Field(0.5, gt=0.0, le=1.0, description="Over a bound, the window is cut to this share "
                                   "of it at once, so the prompt's start (and the LLM server's cache) holds for turns")
    apology: str = "Sorry, I'm having trouble answering right now. Could you say that again?"
    llm_base_url_replicas: str = Field(
        "", description="More servers of the platform's model (comma-separated URLs, same model and LLM_API_KEY) "
        "beside LLM_BASE_URL: each call is kept on one of them (its prompt cache) and new calls go round them, so "
        "two calls never queue on a server that answers one request at a time. `make run` sets it (LLM_SERVERS)")

    def platform_urls(self) -> tuple[str, ...]:
        """LLM_BASE_URL first, then its replicas (blanks and repeats dropped)."""
        urls = [self.llm_base_url, *(u.strip() for u in self.llm_base_url_replicas.split(","))]
        return tuple(dict.fromkeys(u for u in urls if u))

    # replies begun on the likely-final transcript (voice_brain.early)
    early_replies: bool = Field(True, description="Begin a turn's reply (its LLM request, nothing spoken or stored) "
                                "on the likely-final transcript stt makes at a pause; kept when the final "
                                "transcript and the prompt are the same, else cancelled")
    prompt_warmup: bool = Field(True, description="When a call is answered, have its server of the platform's model "
                                "evaluate the call's fixed prompt (system prompt, tools, greeting) with a one-token "
                                "completion while the greeting plays, so the caller's first turn finds it in the "
                                "server's prompt cache (an agent's own LLM endpoint is never sent one)")
    early_reply_ttl_s: float = Field(8.0, gt=0, le=60, description="An early reply not taken by then is dropped")
    early_reply_max_calls: int = Field(256, ge=1, le=100_000, description="Calls with an early reply per replica")

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

    # MCP servers of agents (voice_brain.mcp_tools)
    mcp_list_wait_s: float = Field(
        2.0, ge=0.0, le=30.0, description="Longest a turn waits for its agent's MCP tool listings (listed once per "
        "agent version when a call starts, then cached); a server listed later offers its tools from the next turn",
    )
    mcp_cache_entries: int = Field(512, ge=1, le=100_000, description="MCP tool listings (agent version and server) "
                                   "kept per replica (LRU)")

    # intents (voice_brain.intents): each caller turn classified against the agent's intents before the LLM
    intents_model: Literal["minilm", "lexical"] = Field(
        "minilm", description="minilm: sentence embeddings (all-MiniLM-L6-v2 int8 ONNX, bundled); lexical: word "
        "overlap only (also the fallback when the model cannot load)",
    )
    intents_cache_agents: int = Field(256, ge=1, le=100_000, description="Agent versions whose example vectors "
                                      "are kept per replica (LRU)")
