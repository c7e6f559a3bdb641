"""Knowledge retrieval at turn time: the chunks of the agent's knowledge bases that best match the caller's words,
placed in the prompt (after the fixed system prompt and the supervisor notes, so the provider's prompt cache still
matches the fixed prefix) with the name of the document each came from, and reported with the turn
(``TurnCompleted.sources``).

One SQL query per turn (control-api writes the tables, ``voice_runtime/migrations/0011_knowledge.sql``), filtered
by the call's tenant AND the agent's ``knowledge_base_ids``, bounded by ``KNOWLEDGE_TIMEOUT_S``: a retrieval that
fails or is slow is skipped (logged, counted in ``voice_errors_total{kind="knowledge_*"}``), never blocking the reply.
Without ``DATABASE_URL`` knowledge is off (one warning at start).

Misheard words: each of the caller's longest words (4+ letters, not question words) adds the word of the agent's
bases most similar to it (pg_trgm similarity at least ``MIN_WORD_SIMILARITY``, through the trigram index on
``knowledge_words``), so "parkin" also searches "parking"; a word the bases hold finds itself.

Candidates (at most ``CANDIDATES`` from each source, through an index each):
  - full text: the caller's words and their corrections OR-ed into a tsquery (english configuration: stemmed, stop
    words dropped), GIN index on the chunks' generated tsvector;
  - semantic (only with ``EMBEDDINGS_BASE_URL``): the chunks whose vector has a cosine over ``MIN_COSINE`` with the
    caller's words' vector (an exhaustive dot product over the agent's bases: there is no vector index).

Ranking of the candidates (each term in [0, 1]):
  lexical = ts_rank_cd(tsv, query, 32) / its maximum over the candidates
  score   = lexical                                      without vectors
  score   = 0.5 * lexical + 0.5 * max(cosine, 0)         with vectors (a chunk without a vector counts cosine 0)
The ``top_k`` best (``AgentConfig.knowledge``) go into the prompt, cut to ``max_chars`` characters in all.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg
from voice_runtime import metrics
from voice_runtime.embeddings import Embedder
from voice_runtime.logging import get_logger, safe_error
from voice_schemas import AgentConfig, events

from .conversation import CallHistory
from .history import HistoryStore
from .settings import BrainSettings

log = get_logger(__name__)

CANDIDATES = 50  # per source (full text, fuzzy, semantic)
MAX_QUERY_WORDS = 32  # of the caller's words, the first
MAX_FUZZY_TERMS = 4  # the longest words of 4+ letters
MIN_COSINE = 0.2  # a semantic-only candidate below this is noise
MIN_WORD_SIMILARITY = 0.45  # trigram similarity of a misheard word to the base's word it is taken for
VECTOR_WEIGHT = 0.5
MIN_CHUNK_CHARS = 80  # a chunk cut shorter than this to fit max_chars is left out instead
HEADER = ("Knowledge from this agent's documents that may answer the caller's last words (the caller cannot see "
          "it). Use it when it helps and name its source; do not invent what it does not say.")
_WORD = re.compile(r"[^\W_]+")
# words of 4+ letters that say nothing about the topic: never fuzzy-matched
_FILLER = frozenset(
    "what when where which while that this these those there their they them then than have does with your yours "
    "about would could should from will just like some know want need please thanks thank hello okay yeah also "
    "into only been were very much more most tell said says into".split()
)


@dataclass(frozen=True, slots=True)
class Query:
    """What the database is asked for one caller utterance."""

    tsquery: str  # words OR-ed for to_tsquery (only letters and digits: nothing to escape)
    fuzzy: tuple[str, ...]  # words to correct to the bases' own words (trigram similarity)


def query_of(text: str) -> Query | None:
    """The retrieval query of a caller's words; None when they hold no word."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:MAX_QUERY_WORDS]
    if not words:
        return None
    fuzzy = sorted((w for w in words if len(w) >= 4 and w not in _FILLER and not w.isdigit()), key=len,
                   reverse=True)[:MAX_FUZZY_TERMS]
    return Query(" | ".join(words), tuple(fuzzy))


@lru_cache(maxsize=4)
def retrieval_sql(semantic: bool) -> str:
    """The one query of a turn. $1 tenant, $2 base ids, $3 tsquery text, $4 words to correct (text[]), $5 the query
    vector (real[], NULL without vectors), $6 top_k. Each step is materialized once (the planner would otherwise
    re-run the candidates for every document joined at the end)."""
    scope = "c.tenant_id = $1 AND c.knowledge_base_id = ANY($2::text[])"
    sources = [f"(SELECT c.id FROM knowledge_chunks c, q WHERE {scope} AND c.tsv @@ q.tsq"
               f" ORDER BY ts_rank_cd(c.tsv, q.tsq, 32) DESC LIMIT {CANDIDATES})"]
    if semantic:
        sources.append(f"(SELECT c.id FROM knowledge_chunks c, q WHERE {scope} AND c.embedding IS NOT NULL"
                       f" AND knowledge_dot(c.embedding, q.vector) > {MIN_COSINE}"
                       f" ORDER BY knowledge_dot(c.embedding, q.vector) DESC LIMIT {CANDIDATES})")
    cosine = "coalesce(knowledge_dot(c.embedding, q.vector), 0)" if semantic else "NULL::double precision"
    combined = f"{1 - VECTOR_WEIGHT} * lexical + {VECTOR_WEIGHT} * greatest(cosine, 0)" if semantic else "lexical"
    return f"""
        WITH corrected AS MATERIALIZED (
            SELECT w.word FROM unnest($4::text[]) AS t(term) CROSS JOIN LATERAL (
                SELECT k.word FROM knowledge_words k
                WHERE k.tenant_id = $1 AND k.knowledge_base_id = ANY($2::text[]) AND k.word % t.term
                      AND similarity(k.word, t.term) >= {MIN_WORD_SIMILARITY}
                ORDER BY similarity(k.word, t.term) DESC, k.word LIMIT 1) w
        ),
        q AS MATERIALIZED (
            SELECT to_tsquery('english', concat_ws(' | ', nullif($3, ''),
                                                   (SELECT string_agg(word, ' | ') FROM corrected))) AS tsq,
                   $5::real[] AS vector
        ),
        candidates AS MATERIALIZED ({' UNION '.join(sources)}),
        scored AS MATERIALIZED (
            SELECT c.id, c.knowledge_base_id, c.document_id, c.content, ts_rank_cd(c.tsv, q.tsq, 32) AS text_rank,
                   {cosine} AS cosine
            FROM candidates JOIN knowledge_chunks c ON c.id = candidates.id, q
            WHERE {scope}
        ),
        ranked AS MATERIALIZED (
            SELECT *, coalesce(text_rank / nullif(max(text_rank) OVER (), 0), 0) AS lexical FROM scored
        )
        SELECT r.id, r.knowledge_base_id, r.document_id, d.name AS document_name, r.content,
               ({combined})::double precision AS score
        FROM ranked r JOIN knowledge_documents d ON d.id = r.document_id AND d.tenant_id = $1
        ORDER BY score DESC, r.id LIMIT $6
    """


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str
    knowledge_base_id: str
    document_id: str
    document_name: str
    content: str
    score: float


@dataclass(frozen=True, slots=True)
class TurnKnowledge:
    """What a turn's prompt is given: the system message, and the chunks it holds (for ``TurnCompleted``)."""

    text: str
    sources: list[events.KnowledgeSource]


def render(chunks: list[Chunk], max_chars: int) -> TurnKnowledge | None:
    """The knowledge message: each chunk numbered with its source, best first, within ``max_chars`` of chunk text
    (the last one cut at a word when it does not fit whole; left out when under ``MIN_CHUNK_CHARS``)."""
    parts: list[str] = []
    used: list[Chunk] = []
    budget = max_chars
    for c in chunks:
        content = c.content
        if len(content) > budget:
            content = content[:budget].rsplit(" ", 1)[0] + " …"
            if len(content) < MIN_CHUNK_CHARS:
                break
        budget -= len(content)
        used.append(c)
        parts.append(f"[{len(used)}] Source: {c.document_name}\n{content}")
        if budget < MIN_CHUNK_CHARS:
            break
    if not used:
        return None
    sources = [events.KnowledgeSource(chunk_id=c.chunk_id, knowledge_base_id=c.knowledge_base_id,
                                      document_id=c.document_id, document_name=c.document_name[:256],
                                      score=round(c.score, 4)) for c in used]
    return TurnKnowledge("\n\n".join([HEADER, *parts]), sources)


class Knowledge:
    """The retrieval of one brain replica: a small pool to PostgreSQL and, with ``EMBEDDINGS_BASE_URL``, the
    embeddings client. ``start`` once the service starts, ``aclose`` when it stops."""

    def __init__(self, settings: BrainSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.embedder: Embedder | None = None

    @property
    def enabled(self) -> bool:
        return self.pool is not None

    async def start(self) -> None:
        s = self.settings
        if not s.database_url:
            log.warning("knowledge_off", reason="DATABASE_URL is not set: agents' knowledge bases are not retrieved")
            return
        options: dict[str, Any] = dict(max_size=s.knowledge_pool_max, command_timeout=5,
                                       server_settings={"application_name": "voice-brain"})
        try:  # connections made now (a first turn does not wait for one), unless the database is down now
            self.pool = await asyncpg.create_pool(s.database_url, min_size=1, timeout=5, **options)
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            log.warning("knowledge_database_unavailable", error=safe_error(e))
            self.pool = await asyncpg.create_pool(s.database_url, min_size=0, **options)  # connects on first use
        self.embedder = Embedder.from_settings(s)

    async def aclose(self) -> None:
        if self.embedder is not None:
            await self.embedder.aclose()
        if self.pool is not None:
            await self.pool.close()

    async def retrieve(self, tenant_id: str, base_ids: list[str], text: str, top_k: int) -> list[Chunk]:
        """The ``top_k`` best chunks for ``text`` in the tenant's bases ``base_ids`` (unbounded: see ``for_turn``)."""
        assert self.pool is not None
        q = query_of(text)
        if q is None or not base_ids:
            return []
        vector = (await self.embedder.embed([text]))[0] if self.embedder is not None else None
        sql = retrieval_sql(vector is not None)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, tenant_id, base_ids, q.tsquery, list(q.fuzzy), vector, top_k)
        return [Chunk(str(r["id"]), r["knowledge_base_id"], r["document_id"], r["document_name"], r["content"],
                      float(r["score"])) for r in rows]

    async def for_turn(self, tenant_id: str, agent: AgentConfig, text: str | None) -> TurnKnowledge | None:
        """The knowledge for a caller turn of ``agent``; None when it has no bases, nothing matched, or retrieval
        failed or took longer than ``KNOWLEDGE_TIMEOUT_S``. Never raises."""
        if self.pool is None or not agent.knowledge_base_ids or not text:
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.knowledge_timeout_s):
                chunks = await self.retrieve(tenant_id, agent.knowledge_base_ids, text, agent.knowledge.top_k)
        except TimeoutError:
            metrics.ERRORS.labels("brain", "knowledge_timeout").inc()
            log.warning("knowledge_skipped", reason="timeout", agent_id=agent.id,
                        timeout_s=self.settings.knowledge_timeout_s)
            return None
        except Exception as e:
            metrics.ERRORS.labels("brain", "knowledge_failed").inc()
            log.warning("knowledge_skipped", reason="error", agent_id=agent.id, error=safe_error(e, 200))
            return None
        metrics.STAGE_SECONDS.labels("brain", "knowledge_retrieval").observe(time.perf_counter() - started)
        return render(chunks, agent.knowledge.max_chars)

    async def attach(self, history: HistoryStore, h: CallHistory, agent: AgentConfig, turn_id: str) -> str | None:
        """Retrieve for the caller's words of ``turn_id`` and store the result with the turn (its sources go out
        with ``turn.completed``; later completions of the turn, after a tool round, read the same text). Returns
        the knowledge message for the turn's first completion (None: the prompt has none)."""
        turn = h.turns.get(turn_id)
        found = await self.for_turn(h.tenant_id, agent, turn.caller_text if turn is not None else None)
        if found is None:
            return None
        await history.update(h.call_id, lambda x: x.note_knowledge(turn_id, found.text, found.sources))
        return found.text
