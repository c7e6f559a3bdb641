"""Text embeddings from an OpenAI-compatible ``/embeddings`` endpoint, for knowledge retrieval: control-api embeds a
document's chunks when they are uploaded, brain embeds the caller's words at each turn. Both must use the same
endpoint and model (one setting block, ``EMBEDDINGS_*``), or the vectors are not comparable.

The endpoint is the operator's (like ``LLM_BASE_URL``), so it is not behind the tenant egress guard. Requests go
over plain httpx (the wire format is one JSON POST; no SDK needed in every service), with a timeout on each, in
batches of ``EMBEDDINGS_BATCH`` inputs. Vectors come back scaled to unit length, so their dot product is the cosine
similarity (the database ranks with a dot product).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import httpx
from pydantic import Field, SecretStr

from .settings import _Settings

MAX_INPUT_CHARS = 8_000  # one input; a chunk is far shorter, a caller turn too


class EmbeddingSettings(_Settings):
    """Unset ``EMBEDDINGS_BASE_URL``: no vectors (knowledge is ranked by full-text and trigram similarity)."""

    embeddings_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint (…/v1) serving /embeddings; unset: knowledge without vectors"
    )
    embeddings_api_key: SecretStr = Field(SecretStr(""), description="API key for EMBEDDINGS_BASE_URL")
    embeddings_model: str = Field("text-embedding-3-small", description="Embedding model name")
    embeddings_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of one embeddings request")
    embeddings_batch: int = Field(64, ge=1, le=2048, description="Inputs per embeddings request")


class EmbeddingError(Exception):
    """The endpoint did not answer with one vector per input (the message names the status, never the text)."""


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else [0.0 for _ in vector]


class Embedder:
    """One client per service; ``aclose`` on shutdown."""

    def __init__(self, settings: EmbeddingSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        assert settings.embeddings_base_url, "Embedder needs EMBEDDINGS_BASE_URL"
        self.model = settings.embeddings_model
        self.batch = settings.embeddings_batch
        key = settings.embeddings_api_key.get_secret_value()
        self._client = httpx.AsyncClient(
            base_url=settings.embeddings_base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=settings.embeddings_timeout_s,
            transport=transport,
        )

    @staticmethod
    def from_settings(settings: EmbeddingSettings) -> Embedder | None:
        return Embedder(settings) if settings.embeddings_base_url else None

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order (``EMBEDDINGS_BATCH`` texts per request)."""
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch):
            out += await self._request([t[:MAX_INPUT_CHARS] for t in texts[start : start + self.batch]])
        return out

    async def _request(self, inputs: list[str]) -> list[list[float]]:
        try:
            r = await self._client.post("embeddings", json={"model": self.model, "input": inputs})
        except httpx.HTTPError as e:
            raise EmbeddingError(f"embeddings request failed: {type(e).__name__}") from e
        if r.status_code != 200:
            raise EmbeddingError(f"embeddings endpoint answered {r.status_code}")
        try:
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            vectors = [[float(x) for x in d["embedding"]] for d in data]
        except (ValueError, KeyError, TypeError) as e:
            raise EmbeddingError("embeddings endpoint answered an unexpected body") from e
        if len(vectors) != len(inputs) or len({len(v) for v in vectors}) > 1 or not vectors[0]:
            raise EmbeddingError("embeddings endpoint answered the wrong number or shape of vectors")
        return [unit(v) for v in vectors]

    async def aclose(self) -> None:
        await self._client.aclose()
