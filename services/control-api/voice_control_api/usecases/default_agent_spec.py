"""Seeding the default agent from a spec file (``BOOTSTRAP_DEFAULT_AGENT_SPEC``): the agent's fields and one
knowledge base with its documents, created together when bootstrap first stores the default agent (``make run``
writes the demo restaurant's spec, ``voice_devstack.demo``).

The file is read and checked before anything is written: the agent's fields as the API takes them
(``AgentFields``, unknown fields refused), the documents parsed and chunked like uploads (embedded when
``EMBEDDINGS_BASE_URL`` is set; without an answer from it, stored without vectors). A spec that cannot be read or
is invalid stops start-up with a message naming the file and the field: it is the operator's configuration. The
tools and intents pass the same checks as an agent saved through the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from voice_runtime.embeddings import Embedder, EmbeddingError
from voice_runtime.logging import get_logger, safe_error
from voice_schemas.agent import AgentConfig

from ..models import AgentFields
from ..security import new_id
from ..settings import ControlApiSettings
from ..store import knowledge as knowledge_store
from . import agent_tools, intents
from .errors import UseCaseError
from .knowledge import Parsed, Upload, document_name, parse

log = get_logger(__name__)

MAX_SPEC_BYTES = 2_000_000
BY = "bootstrap"


class SpecDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=500_000)


class SpecKnowledgeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    documents: list[SpecDocument] = Field(default_factory=list, max_length=50)


class AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: AgentFields
    knowledge_base: SpecKnowledgeBase | None = None


class InvalidSpec(RuntimeError):
    """The spec file cannot be read or does not validate (the message names the file and what is wrong)."""


@dataclass(frozen=True, slots=True)
class PreparedSpec:
    """The spec checked, its documents parsed and (when configured) embedded: ready to be written."""

    spec: AgentSpec
    documents: list[tuple[SpecDocument, Parsed, list[list[float]] | None, str | None]]


def load(path: Path) -> AgentSpec:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidSpec(f"BOOTSTRAP_DEFAULT_AGENT_SPEC {path}: cannot be read ({type(e).__name__})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidSpec(f"BOOTSTRAP_DEFAULT_AGENT_SPEC {path}: larger than {MAX_SPEC_BYTES} bytes")
    try:
        return AgentSpec.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidSpec(f"BOOTSTRAP_DEFAULT_AGENT_SPEC {path}: not JSON ({e})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InvalidSpec(f"BOOTSTRAP_DEFAULT_AGENT_SPEC {path}: {where}: {first['msg']}") from None


async def prepare(settings: ControlApiSettings, path: Path) -> PreparedSpec:
    """Read, check, parse and embed (before any transaction: parsing is CPU work, embedding a network call)."""
    spec = load(path)
    documents: list[tuple[SpecDocument, Parsed, list[list[float]] | None, str | None]] = []
    embedder = Embedder.from_settings(settings)
    try:
        for d in spec.knowledge_base.documents if spec.knowledge_base else []:
            upload = Upload(d.filename, None, d.text.encode())
            try:
                parsed = await asyncio.to_thread(parse, upload, chunk_chars=settings.knowledge_chunk_chars,
                                                 overlap=settings.knowledge_chunk_overlap,
                                                 max_chunks=settings.knowledge_max_chunks)
            except Exception as e:
                raise InvalidSpec(f"BOOTSTRAP_DEFAULT_AGENT_SPEC {path}: document {d.filename!r}: {e}") from None
            vectors: list[list[float]] | None = None
            if embedder is not None:
                try:
                    vectors = await embedder.embed(parsed.chunks)
                except EmbeddingError as e:
                    log.warning("default_agent_spec_not_embedded", document=d.filename, error=safe_error(e))
            documents.append((d, parsed, vectors, embedder.model if vectors is not None and embedder else None))
    finally:
        if embedder is not None:
            await embedder.aclose()
    return PreparedSpec(spec, documents)


async def apply(conn: asyncpg.Connection, prepared: PreparedSpec, base: AgentConfig,
                settings: ControlApiSettings) -> AgentConfig:
    """Inside bootstrap's transaction: the knowledge base and its documents written, and ``base`` (the default
    agent: its id, tenant and version) with the spec's fields and that base attached."""
    spec = prepared.spec
    fields: dict[str, Any] = spec.agent.model_dump(mode="json")
    if spec.knowledge_base is not None:
        kb = spec.knowledge_base
        base_id = new_id()
        created = await knowledge_store.create(conn, base_id=base_id, tenant_id=base.tenant_id, name=kb.name,
                                               description=kb.description)
        if created is None:  # the tenant has a base of that name already: the agent uses it as it is
            base_id = await conn.fetchval("SELECT id FROM knowledge_bases WHERE tenant_id = $1 AND name = $2",
                                          base.tenant_id, kb.name)
        else:
            for d, parsed, vectors, model in prepared.documents:
                data = d.text.encode()
                await knowledge_store.add_document(
                    conn, document_id=new_id(), tenant_id=base.tenant_id, base_id=base_id,
                    name=document_name(d.filename), content_type=parsed.content_type, size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(), pages=parsed.pages, chars=parsed.text_chars,
                    chunks=parsed.chunks, embeddings=vectors, embedding_model=model, created_by=BY,
                )
            await knowledge_store.touch(conn, base.tenant_id, base_id)
        fields["knowledge_base_ids"] = [*fields.get("knowledge_base_ids", []), base_id]
    config = AgentConfig(id=base.id, tenant_id=base.tenant_id, version=base.version, **fields)
    try:
        await agent_tools.check(settings.egress_policy(), conn, config.tenant_id, config.tools)
        intents.check(config)
    except UseCaseError as e:
        raise InvalidSpec(f"BOOTSTRAP_DEFAULT_AGENT_SPEC: agent.{e}") from None
    return config
