"""`make bench-knowledge`: latency of a turn's knowledge retrieval at 10,000 chunks.

    .venv/bin/python -m bench.knowledge [--chunks 10000] [--queries 300] [--keep]

A fresh database (``voice_bench_knowledge`` on ``DATABASE_URL``'s server, else the local or embedded PostgreSQL
that ``make run`` uses) gets the platform's migrations and, through COPY, ``--chunks`` chunks of ~700 characters
in three knowledge bases of one tenant (all three attached to the measured agent) plus half as many in another
tenant (so the tenant filter has work to do). The text is seeded synthetic prose over a 3,000-word vocabulary
(Zipf-distributed, like real text). Queries are caller-like questions over the same vocabulary, one in four with
a misheard word (a letter dropped, for the trigram path).

Each query runs through brain's own code (``voice_brain.knowledge.Knowledge.retrieve``: the pool, the one SQL
query, full text + trigram, no vectors), one at a time after a warm-up, timed from the call to its return. The
report (p50/p95/p99 with n, hit rate, chunks returned) goes to ``bench/results/latest-knowledge.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import asyncpg

from .machine import cpu_model, git_commit
from .stats import summary

RESULTS = Path(__file__).resolve().parent / "results"
DB_NAME = "voice_bench_knowledge"
TENANT, OTHER = "bench-tenant", "bench-other"
BASES = ("kb-menu", "kb-policies", "kb-faq")
TOPICS = ("parking", "opening", "hours", "menu", "vegan", "gluten", "booking", "refund", "delivery", "birthday",
          "terrace", "wheelchair", "allergens", "voucher", "invoice", "catering", "wine", "dessert", "children",
          "dogs")
FILLER = ("do you have", "can you tell me about", "what about", "is there any", "I wanted to ask about",
          "how does it work with")


def vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ter", "san", "vo", "ri", "den", "pa", "lu", "nor", "te", "bra", "mon", "fi",
                 "gel", "ost", "ar", "quin", "zu"]
    words = {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(n * 2)}
    return sorted(words)[: n - len(TOPICS)] + list(TOPICS)


def chunk_texts(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf: a few words everywhere, most rare
    rng.shuffle(vocab)
    out = []
    for _ in range(n):
        sentences = []
        while sum(len(s) for s in sentences) < 700:
            words = rng.choices(vocab, weights=weights, k=rng.randint(8, 16))
            sentences.append(" ".join(words).capitalize() + ".")
        out.append(" ".join(sentences))
    return out


def questions(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    out = []
    for i in range(n):
        words = rng.sample(vocab, rng.randint(1, 3))
        if i % 4 == 3:  # misheard: a letter dropped from the longest word
            w = max(words, key=len)
            cut = rng.randrange(1, len(w) - 1)
            words[words.index(w)] = w[:cut] + w[cut + 1:]
        out.append(f"{rng.choice(FILLER)} {' '.join(words)}?")
    return out


async def server_dsn() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url.rsplit("/", 1)[0]
    from voice_devstack.stack import resolve_postgres

    dsn, embedded = resolve_postgres()
    if embedded is not None:
        embedded.start()
    return dsn.rsplit("/", 1)[0]


async def load(dsn: str, chunks: int, rng: random.Random) -> dict[str, Any]:
    from voice_runtime.db import connect

    pool = await connect(dsn, max_size=2)
    vocab = vocabulary(rng)
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.executemany("INSERT INTO tenants (id, name) VALUES ($1, $1)", [(TENANT,), (OTHER,)])
        rows: list[tuple[Any, ...]] = []
        for tenant, count in ((TENANT, chunks), (OTHER, chunks // 2)):
            texts = chunk_texts(rng, list(vocab), count)
            for b, base in enumerate(BASES):
                base_id, doc_id = f"{tenant}-{base}", f"{tenant}-{base}-doc"
                await conn.execute("INSERT INTO knowledge_bases (id, tenant_id, name) VALUES ($1, $2, $3)",
                                   base_id, tenant, base)
                mine = texts[b::len(BASES)]
                await conn.execute(
                    "INSERT INTO knowledge_documents (id, tenant_id, knowledge_base_id, name, content_type, "
                    "size_bytes, sha256, chars, chunks) VALUES ($1, $2, $3, $4, 'text/plain', $5, '-', $5, $6)",
                    doc_id, tenant, base_id, f"{base}.txt", sum(len(t) for t in mine), len(mine))
                rows += [(tenant, base_id, doc_id, i, t) for i, t in enumerate(mine)]
        await conn.copy_records_to_table(
            "knowledge_chunks", records=rows,
            columns=["tenant_id", "knowledge_base_id", "document_id", "ordinal", "content"])
        await conn.execute("ANALYZE knowledge_chunks")
        version = await conn.fetchval("SHOW server_version")
    await pool.close()
    return {"vocabulary": vocab, "load_s": round(time.perf_counter() - started, 1), "postgres": version}


async def measure(dsn: str, queries: list[str], warmup: int) -> dict[str, Any]:
    from voice_brain.knowledge import Knowledge
    from voice_brain.settings import BrainSettings

    knowledge = Knowledge(BrainSettings(database_url=dsn, nats_url="nats://unused:4222"))
    await knowledge.start()
    bases = [f"{TENANT}-{b}" for b in BASES]
    latencies: list[float] = []
    returned: list[int] = []
    try:
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            found = await knowledge.retrieve(TENANT, bases, q, 3)
            elapsed = (time.perf_counter() - t0) * 1000
            assert all(c.knowledge_base_id in bases for c in found)
            if i >= warmup:
                latencies.append(elapsed)
                returned.append(len(found))
    finally:
        await knowledge.aclose()
    return {"latency_ms": summary(latencies, ndigits=2), "hit_rate": round(sum(1 for r in returned if r) /
            len(returned), 3), "chunks_returned_mean": round(sum(returned) / len(returned), 2)}


def report(data: dict[str, Any]) -> str:
    lat = data["latency_ms"]
    return "\n".join([
        "# Knowledge retrieval",
        "",
        f"{data['chunks']:,} chunks of ~700 characters in the agent's 3 knowledge bases (+{data['chunks'] // 2:,} of "
        f"another tenant), PostgreSQL {data['postgres']}, full text + trigram (no vectors), top 3.",
        "",
        "| n | p50 ms | p95 ms | p99 ms | max ms | hit rate | chunks returned (mean) |",
        "|---|---|---|---|---|---|---|",
        f"| {lat['n']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} | {data['hit_rate']:.0%} | "
        f"{data['chunks_returned_mean']} |",
        "",
        f"Machine: {data['machine']}; commit {data['git']['commit']}{' (dirty)' if data['git']['dirty'] else ''}; "
        f"load {data['load_s']} s.",
        "",
    ])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = await server_dsn()
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    finally:
        await admin.close()
    dsn = f"{server}/{DB_NAME}"
    rng = random.Random(args.seed)
    loaded = await load(dsn, args.chunks, rng)
    qs = questions(rng, [w for w in loaded["vocabulary"] if len(w) >= 4], args.queries + args.warmup)
    measured = await measure(dsn, qs, args.warmup)
    if not args.keep:
        admin = await asyncpg.connect(f"{server}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        finally:
            await admin.close()
    return {"chunks": args.chunks, "queries": args.queries, "warmup": args.warmup, "seed": args.seed,
            "postgres": loaded["postgres"], "load_s": loaded["load_s"], **measured, "machine": cpu_model(),
            "git": git_commit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks in the measured agent's bases")
    parser.add_argument("--queries", type=int, default=300, help="measured queries (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help=f"keep the database {DB_NAME} afterwards")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest-knowledge.{md,json} go")
    args = parser.parse_args()
    data = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest-knowledge.json").write_text(json.dumps(data, indent=2) + "\n")
    text = report(data)
    (args.out / "latest-knowledge.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
