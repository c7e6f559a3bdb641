"""Brain's knowledge pieces without I/O: the query of a caller's words, the knowledge message, where it sits in the
prompt, and the sources a completed turn carries."""

from __future__ import annotations

import pytest
from voice_brain.conversation import CallHistory, SentChunk, TurnState, turn_completed
from voice_brain.knowledge import HEADER, MIN_CHUNK_CHARS, Chunk, query_of, render, retrieval_sql
from voice_schemas import events

pytestmark = pytest.mark.unit


def chunk(i: int, content: str, name: str = "menu.pdf", score: float = 1.0) -> Chunk:
    return Chunk(str(i), "kb1", "doc1", name, content, score)


def test_the_query_ors_the_callers_words_and_picks_fuzzy_terms() -> None:
    q = query_of("Where's the PARKING, and what's it cost? Parking!")
    assert q is not None
    assert q.tsquery == "where | s | the | parking | and | what | it | cost"  # once each, only letters and digits
    assert q.fuzzy == ("parking", "cost")  # 4+ letters, no filler words, the longest first
    assert query_of("  ?! ... ") is None
    hostile = query_of("a' | b & !c <-> d:* (e)")
    assert hostile is not None and hostile.tsquery == "a | b | c | d | e"  # tsquery syntax never passes through


def test_the_query_is_bounded() -> None:
    q = query_of(" ".join(f"word{i}" for i in range(100)))
    assert q is not None and len(q.tsquery.split(" | ")) == 32 and len(q.fuzzy) == 4


def test_the_sql_filters_by_tenant_and_bases_in_every_source() -> None:
    for semantic in (False, True):
        sql = retrieval_sql(semantic)
        scope = "c.tenant_id = $1 AND c.knowledge_base_id = ANY($2::text[])"
        assert sql.count(scope) == 2 + (1 if semantic else 0)
        assert "k.tenant_id = $1 AND k.knowledge_base_id = ANY($2::text[])" in sql  # the words corrected against
        assert "d.tenant_id = $1" in sql
        assert ("knowledge_dot" in sql) == semantic


def test_render_numbers_chunks_with_their_source_within_the_budget() -> None:
    found = render([chunk(1, "Parking is free after six.", "parking.md", 0.91),
                    chunk(2, "We open at eight.", "hours.html", 0.5)], max_chars=2000)
    assert found is not None
    assert found.text == f"{HEADER}\n\n[1] Source: parking.md\nParking is free after six.\n\n" \
                         "[2] Source: hours.html\nWe open at eight."
    assert [(s.chunk_id, s.document_name, s.score) for s in found.sources] == [("1", "parking.md", 0.91),
                                                                               ("2", "hours.html", 0.5)]
    assert render([], 2000) is None


def test_render_cuts_the_last_chunk_and_leaves_out_a_stub() -> None:
    long = " ".join(["word"] * 200)  # 999 characters
    found = render([chunk(1, long), chunk(2, long), chunk(3, "short")], max_chars=1200)
    assert found is not None and [s.chunk_id for s in found.sources] == ["1", "2"]
    body = found.text.split("[2] Source: menu.pdf\n")[1]
    assert body.endswith(" …") and len(body) <= 1200 - len(long) + 2
    stub = render([chunk(1, long), chunk(2, long)], max_chars=len(long) + MIN_CHUNK_CHARS - 10)
    assert stub is not None and [s.chunk_id for s in stub.sources] == ["1"]


def history() -> CallHistory:
    h = CallHistory(call_id="c1", tenant_id="t1", agent_id="a1", agent_version=1)
    h.add_supervisor_note("n1", "Offer the soup.")
    h.summary = ["Caller: Hi."]
    h.add_caller_turn("t1", 0, events.TranscriptFinalized(utterance_id="u1", text="Is there parking?"))
    return h


def test_knowledge_goes_after_everything_else_right_before_the_callers_words() -> None:
    """The fixed system prompt first, then what changes more and more often (notes, summary, window), this turn's
    knowledge last: the LLM server's prompt cache keeps everything before it."""
    h = history()
    messages = h.prompt("You are the front desk.", "KNOWLEDGE")
    assert [m["content"] for m in messages[:2]] == [
        "You are the front desk.",
        "Instruction from your supervisor (the caller cannot hear this): Offer the soup.",
    ]
    assert messages[2]["content"].startswith("Summary of the earlier part")
    assert messages[-2] == {"role": "system", "content": "KNOWLEDGE"}
    assert messages[-1] == {"role": "user", "content": "Is there parking?"}
    assert h.prompt("You are the front desk.") == [m for m in messages if m["content"] != "KNOWLEDGE"]


def test_a_turns_stored_knowledge_stays_in_its_later_prompts_and_its_sources_go_with_it() -> None:
    h = history()
    found = render([chunk(7, "Parking is free after six.", "parking.md", 0.8)], 2000)
    assert found is not None
    h.note_knowledge("t1", found.text, found.sources)
    assert found.text in [m["content"] for m in h.prompt("sys")]  # a tool round's completion reads it too
    h.record_chunk("t1", SentChunk(0, "Yes.", True))
    done = h.settle("t1", [0], cleared=False)
    assert isinstance(done, TurnState)
    event = turn_completed(h, done, 1_000.0)
    assert [(s.chunk_id, s.document_name) for s in event.sources] == [("7", "parking.md")]
    h.forget("t1")
    assert found.text not in [m["content"] for m in h.prompt("sys")]  # the next turn retrieves its own
