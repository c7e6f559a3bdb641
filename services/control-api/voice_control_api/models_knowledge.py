"""API models of knowledge bases and their documents (kept apart from ``models``, which other resources edit).
A document's text is never returned: only what was stored of it (size, chunks, whether it has vectors)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from .fields import Description, Name
from .openapi_examples import TENANT_ID, examples

KNOWLEDGE_BASE_ID = "5b7d2c0e9f3a4e1b8c6d4a2f0e1b3c5d"
AT = "2025-01-01T10:00:00Z"


class KnowledgeBaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", **examples({"name": "Menu and hours",
                                                          "description": "What the front desk may answer"}))
    name: Name = Field(description="Unique in the tenant")
    description: Description | None = None


class KnowledgeBase(BaseModel):
    model_config = examples({"id": KNOWLEDGE_BASE_ID, "tenant_id": TENANT_ID, "name": "Menu and hours",
                             "description": "What the front desk may answer", "documents": 2, "chunks": 14,
                             "created_at": AT, "updated_at": AT, "version": 3})
    id: str
    tenant_id: str
    name: str
    description: str | None
    documents: int = Field(description="Documents in the base")
    chunks: int = Field(description="Chunks retrieval searches")
    created_at: datetime
    updated_at: datetime
    version: int = Field(description="Bumped by every upload and document deletion")


class KnowledgeDocument(BaseModel):
    model_config = examples({"id": "9a1f0c2d3e4b5a6978c0d1e2f3a4b5c6", "knowledge_base_id": KNOWLEDGE_BASE_ID,
                             "tenant_id": TENANT_ID, "name": "menu.pdf", "content_type": "application/pdf",
                             "size_bytes": 48213, "sha256": "3b5d…", "pages": 2, "chars": 5120, "chunks": 8,
                             "embedding_model": None, "created_at": AT, "created_by": "k_1f2e3d4c"})
    id: str
    knowledge_base_id: str
    tenant_id: str
    name: str = Field(description="The uploaded file's name: the source a turn cites")
    content_type: str = Field(description="text/plain, text/markdown, text/html or application/pdf")
    size_bytes: int
    sha256: str = Field(description="Of the uploaded bytes")
    pages: int | None = Field(description="PDF only")
    chars: int = Field(description="Characters of extracted text")
    chunks: int
    embedding_model: str | None = Field(description="The model the chunks' vectors came from; null: no vectors")
    created_at: datetime
    created_by: str | None


class TurnSource(BaseModel):
    """A knowledge chunk the agent's reply was given (in the call detail, on the agent's turn)."""

    chunk_id: str
    knowledge_base_id: str
    document_id: str
    document_name: str = Field(description="The source cited")
    score: float = Field(description="How well it matched the caller's words (higher is better)")
