"""Knowledge bases, their documents and chunks (brain reads the chunks at each turn, ``voice_brain.knowledge``).
Every query filters by tenant; a document's chunks are written in one COPY, in the use case's transaction."""

from __future__ import annotations

import re
from collections.abc import Sequence

import asyncpg

from ..models_knowledge import KnowledgeBase, KnowledgeDocument
from . import row_as

_BASE = """
    SELECT b.id, b.tenant_id, b.name, b.description, b.created_at, b.updated_at, b.version,
           (SELECT count(*) FROM knowledge_documents d WHERE d.tenant_id = b.tenant_id
                                                        AND d.knowledge_base_id = b.id)::int AS documents,
           (SELECT coalesce(sum(d.chunks), 0) FROM knowledge_documents d WHERE d.tenant_id = b.tenant_id
                                                        AND d.knowledge_base_id = b.id)::int AS chunks
    FROM knowledge_bases b
"""
DOCUMENT_COLUMNS = (
    "id, knowledge_base_id, tenant_id, name, content_type, size_bytes, sha256, pages, chars, chunks, embedding_model,"
    " created_at, created_by"
)


async def create(
    conn: asyncpg.Connection, *, base_id: str, tenant_id: str, name: str, description: str | None
) -> KnowledgeBase | None:
    """None when the tenant already has a base of that name."""
    inserted = await conn.fetchval(
        "INSERT INTO knowledge_bases (id, tenant_id, name, description) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (tenant_id, name) DO NOTHING RETURNING id",
        base_id,
        tenant_id,
        name,
        description,
    )
    return await get(conn, tenant_id, base_id) if inserted else None


async def get(
    conn: asyncpg.Connection, tenant_id: str, base_id: str, *, for_update: bool = False
) -> KnowledgeBase | None:
    lock = " FOR UPDATE OF b" if for_update else ""
    row = await conn.fetchrow(f"{_BASE} WHERE b.tenant_id = $1 AND b.id = $2{lock}", tenant_id, base_id)
    return row_as(KnowledgeBase, row) if row else None


async def list_(conn: asyncpg.Connection, tenant_id: str, *, limit: int, offset: int) -> list[KnowledgeBase]:
    rows = await conn.fetch(
        f"{_BASE} WHERE b.tenant_id = $1 ORDER BY b.created_at, b.id LIMIT $2 OFFSET $3", tenant_id, limit, offset
    )
    return [row_as(KnowledgeBase, r) for r in rows]


async def existing_ids(conn: asyncpg.Connection, tenant_id: str, base_ids: Sequence[str]) -> set[str]:
    """Which of ``base_ids`` are bases of the tenant."""
    rows = await conn.fetch(
        "SELECT id FROM knowledge_bases WHERE tenant_id = $1 AND id = ANY($2::text[])", tenant_id, list(base_ids)
    )
    return {r["id"] for r in rows}


async def agents_using(conn: asyncpg.Connection, tenant_id: str, base_id: str, *, limit: int = 5) -> list[str]:
    """Ids of the tenant's agents whose current version retrieves from the base."""
    rows = await conn.fetch(
        """
        SELECT a.id FROM agents a
        JOIN agent_versions v ON v.agent_id = a.id AND v.version = a.current_version
        WHERE a.tenant_id = $1 AND a.deleted_at IS NULL AND v.config -> 'knowledge_base_ids' ? $2
        ORDER BY a.id LIMIT $3
        """,
        tenant_id,
        base_id,
        limit,
    )
    return [r["id"] for r in rows]


async def touch(conn: asyncpg.Connection, tenant_id: str, base_id: str) -> None:
    await conn.execute(
        "UPDATE knowledge_bases SET updated_at = now(), version = version + 1 WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        base_id,
    )


async def delete(conn: asyncpg.Connection, tenant_id: str, base_id: str) -> None:
    """The base with its documents and chunks (cascades)."""
    await conn.execute("DELETE FROM knowledge_bases WHERE tenant_id = $1 AND id = $2", tenant_id, base_id)


# ------------------------------------------------------------------ documents
async def add_document(
    conn: asyncpg.Connection,
    *,
    document_id: str,
    tenant_id: str,
    base_id: str,
    name: str,
    content_type: str,
    size_bytes: int,
    sha256: str,
    pages: int | None,
    chars: int,
    chunks: Sequence[str],
    embeddings: Sequence[Sequence[float]] | None,
    embedding_model: str | None,
    created_by: str | None,
) -> KnowledgeDocument:
    row = await conn.fetchrow(
        f"""
        INSERT INTO knowledge_documents (id, tenant_id, knowledge_base_id, name, content_type, size_bytes, sha256,
                                         pages, chars, chunks, embedding_model, created_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {DOCUMENT_COLUMNS}
        """,
        document_id,
        tenant_id,
        base_id,
        name,
        content_type,
        size_bytes,
        sha256,
        pages,
        chars,
        len(chunks),
        embedding_model if embeddings is not None else None,
        created_by,
    )
    records = [
        (tenant_id, base_id, document_id, i, text, list(embeddings[i]) if embeddings is not None else None)
        for i, text in enumerate(chunks)
    ]
    await conn.copy_records_to_table(
        "knowledge_chunks",
        records=records,
        columns=["tenant_id", "knowledge_base_id", "document_id", "ordinal", "content", "embedding"],
    )
    await conn.execute(
        "INSERT INTO knowledge_words (tenant_id, knowledge_base_id, word) SELECT $1, $2, unnest($3::text[])"
        " ON CONFLICT DO NOTHING",
        tenant_id,
        base_id,
        sorted(words_of(chunks)),
    )
    return row_as(KnowledgeDocument, row)


_WORD = re.compile(r"[^\W\d_]{4,32}")


def words_of(chunks: Sequence[str]) -> set[str]:
    """The distinct words (letters only, 4 to 32 of them, lower case) retrieval matches misheard words to. A
    document's deletion leaves its words: a word that matches nothing only adds nothing to a query."""
    return {w.lower() for text in chunks for w in _WORD.findall(text)}


async def list_documents(
    conn: asyncpg.Connection, tenant_id: str, base_id: str, *, limit: int, offset: int
) -> list[KnowledgeDocument]:
    rows = await conn.fetch(
        f"""
        SELECT {DOCUMENT_COLUMNS} FROM knowledge_documents
        WHERE tenant_id = $1 AND knowledge_base_id = $2 ORDER BY created_at, id LIMIT $3 OFFSET $4
        """,
        tenant_id,
        base_id,
        limit,
        offset,
    )
    return [row_as(KnowledgeDocument, r) for r in rows]


async def delete_document(conn: asyncpg.Connection, tenant_id: str, base_id: str, document_id: str) -> bool:
    """The document with its chunks; False when the base holds no such document."""
    deleted = await conn.fetchval(
        "DELETE FROM knowledge_documents WHERE tenant_id = $1 AND knowledge_base_id = $2 AND id = $3 RETURNING 1",
        tenant_id,
        base_id,
        document_id,
    )
    return bool(deleted)
