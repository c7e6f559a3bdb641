"""Knowledge bases of a tenant and their documents. Admins create, fill and delete them; every role reads them
(a supervisor attaches them to their agents: ``agents`` checks that an agent names only its tenant's bases).

An upload is parsed and chunked off the event loop (``documents``: text, Markdown, HTML, PDF), embedded when
``EMBEDDINGS_BASE_URL`` is set (the same endpoint and model brain embeds the caller's words with), then stored in
one transaction: the document row, its chunks (PostgreSQL derives each chunk's tsvector), an audit entry. Brain
reads the chunks directly at each turn, so nothing is mirrored to KV. A base that an agent's current version
retrieves from cannot be deleted (409), like an agent that numbers route to.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

import asyncpg
from voice_runtime.embeddings import Embedder, EmbeddingError
from voice_runtime.logging import get_logger, safe_error

from ..context import AppContext
from ..documents import UnreadableDocument, chunk_text, content_type_of, extract
from ..fields import clean_text
from ..models_knowledge import KnowledgeBase, KnowledgeBaseCreate, KnowledgeDocument
from ..principal import Principal
from ..security import new_id
from ..store import knowledge as store
from . import audit_log
from .common import Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict, InvalidField, Unavailable

log = get_logger(__name__)
MAX_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class Upload:
    """A document as it came in: its file name, the declared content type and the bytes."""

    filename: str
    content_type: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class Parsed:
    content_type: str
    text_chars: int
    pages: int | None
    chunks: list[str]


def document_name(filename: str) -> str:
    """The source name a turn cites: the file's base name (no client path), printable, within 200 characters."""
    base = PurePosixPath(filename.replace("\\", "/")).name.strip()
    try:
        base = clean_text(base)
    except ValueError:
        base = ""
    base = "".join(c for c in base if c.isprintable())
    return base[:MAX_NAME_CHARS] or "document"


def parse(upload: Upload, *, chunk_chars: int, overlap: int, max_chunks: int) -> Parsed:
    """The upload's format, text and chunks (CPU-bound: run off the event loop). ``UnsupportedDocument`` /
    ``UnreadableDocument`` for what cannot be taken."""
    content_type = content_type_of(upload.filename, upload.content_type)
    extracted = extract(upload.data, content_type)
    chunks = chunk_text(extracted.text, chunk_chars, min(overlap, chunk_chars // 2 - 1))
    if len(chunks) > max_chunks:
        raise UnreadableDocument(f"the document makes over {max_chunks} chunks; split it")
    return Parsed(content_type, len(extracted.text), extracted.pages, chunks)


async def create_base(ctx: AppContext, principal: Principal, body: KnowledgeBaseCreate) -> KnowledgeBase:
    base_id = new_id()
    async with transaction(ctx) as conn:
        row = await store.create(
            conn, base_id=base_id, tenant_id=principal.tenant_id, name=body.name, description=body.description
        )
        if row is None:
            raise Conflict("a knowledge base of this name exists in the tenant")
        await audit_log.record(conn, principal, "knowledge_base.create", "knowledge_base", base_id)
    return row


async def list_bases(ctx: AppContext, principal: Principal, paging: Pagination) -> Listing[KnowledgeBase]:
    return await fetch_page(ctx, paging, store.list_, principal.tenant_id)


async def get_base(ctx: AppContext, principal: Principal, base_id: str) -> KnowledgeBase:
    async with connection(ctx) as conn:
        return found(await store.get(conn, principal.tenant_id, base_id), "knowledge base")


async def delete_base(ctx: AppContext, principal: Principal, base_id: str) -> None:
    async with transaction(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, base_id, for_update=True), "knowledge base")
        users = await store.agents_using(conn, principal.tenant_id, base_id)
        if users:
            raise Conflict(f"agents retrieve from this knowledge base ({', '.join(users)}); detach it first")
        await store.delete(conn, principal.tenant_id, base_id)
        await audit_log.record(conn, principal, "knowledge_base.delete", "knowledge_base", base_id)


async def check_references(conn: asyncpg.Connection, tenant_id: str, base_ids: list[str]) -> None:
    """An agent version about to be saved names only knowledge bases of its own tenant, each once (another tenant's
    base is refused exactly like one that does not exist)."""
    if len(set(base_ids)) != len(base_ids):
        raise InvalidField("knowledge_base_ids", "names a knowledge base more than once")
    existing = await store.existing_ids(conn, tenant_id, base_ids) if base_ids else set()
    missing = [i for i in base_ids if i not in existing]
    if missing:
        raise InvalidField("knowledge_base_ids", f"no knowledge base {missing[0]} in this tenant")


# ------------------------------------------------------------------ documents
async def _embed(ctx: AppContext, chunks: list[str]) -> tuple[list[list[float]] | None, str | None]:
    embedder = Embedder.from_settings(ctx.settings)
    if embedder is None:
        return None, None
    try:
        return await embedder.embed(chunks), embedder.model
    except EmbeddingError as e:
        log.warning("knowledge_embedding_failed", chunks=len(chunks), error=safe_error(e))
        raise Unavailable("the embeddings endpoint did not answer; upload the document again later") from None
    finally:
        await embedder.aclose()


async def add_document(ctx: AppContext, principal: Principal, base_id: str, upload: Upload) -> KnowledgeDocument:
    s = ctx.settings
    async with connection(ctx) as conn:  # before the work: an unknown base is a 404, not a parse error
        found(await store.get(conn, principal.tenant_id, base_id), "knowledge base")
    parsed = await asyncio.to_thread(
        parse, upload, chunk_chars=s.knowledge_chunk_chars, overlap=s.knowledge_chunk_overlap,
        max_chunks=s.knowledge_max_chunks,
    )
    embeddings, model = await _embed(ctx, parsed.chunks)
    document_id = new_id()
    async with transaction(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, base_id, for_update=True), "knowledge base")
        row = await store.add_document(
            conn,
            document_id=document_id,
            tenant_id=principal.tenant_id,
            base_id=base_id,
            name=document_name(upload.filename),
            content_type=parsed.content_type,
            size_bytes=len(upload.data),
            sha256=hashlib.sha256(upload.data).hexdigest(),
            pages=parsed.pages,
            chars=parsed.text_chars,
            chunks=parsed.chunks,
            embeddings=embeddings,
            embedding_model=model,
            created_by=principal.actor,
        )
        await store.touch(conn, principal.tenant_id, base_id)
        await audit_log.record(
            conn, principal, "knowledge_document.create", "knowledge_base", base_id, document=document_id,
            chunks=len(parsed.chunks),
        )
    log.info("knowledge_document_added", tenant_id=principal.tenant_id, knowledge_base_id=base_id,
             document_id=document_id, content_type=parsed.content_type, chunks=len(parsed.chunks),
             embedded=embeddings is not None)
    return row


async def list_documents(
    ctx: AppContext, principal: Principal, base_id: str, paging: Pagination
) -> Listing[KnowledgeDocument]:
    async with connection(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, base_id), "knowledge base")
        rows = await store.list_documents(
            conn, principal.tenant_id, base_id, limit=paging.fetch, offset=paging.offset
        )
    return paging.page(rows)


async def delete_document(ctx: AppContext, principal: Principal, base_id: str, document_id: str) -> None:
    async with transaction(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, base_id, for_update=True), "knowledge base")
        if not await store.delete_document(conn, principal.tenant_id, base_id, document_id):
            found(None, "knowledge document")
        await store.touch(conn, principal.tenant_id, base_id)
        await audit_log.record(
            conn, principal, "knowledge_document.delete", "knowledge_base", base_id, document=document_id
        )
