"""Two concurrent calls over two stt and two brain replicas: shared work, no mixing, no duplicates.

A brain replica's share of the work is the caller turns it answered: the replies it streamed, each counted once in
its own /metrics when the reply's first sentence goes out (``voice_turn_stage_seconds{stage="llm_first_sentence"}``).
Playout, mark and call events, which every replica also acks, do not count.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from voice_runtime import metrics
from voice_runtime.bus import Bus
from voice_schemas import subjects

from bench.twilio_caller import TwilioCaller

from ..conftest import free_port
from .conftest import PUBLIC, TWILIO_TOKEN, Platform, _wait_ready, configure_agent, poll, speech

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def handled(port: int, consumer: str) -> float:
    """Messages a replica acked on a durable consumer, read from its /metrics."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape(port)) if family.name == metrics.EVENTS_HANDLED._name
        for sample in family.samples
        if sample.labels.get("consumer") == consumer and sample.labels.get("outcome") == "ack"
        and sample.name.endswith("_total")
    )


def replies_streamed(port: int) -> float:
    """Caller turns a brain replica answered: the replies whose first sentence it published."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape(port)) if family.name == metrics.STAGE_SECONDS._name
        for sample in family.samples
        if sample.name == f"{metrics.STAGE_SECONDS._name}_count" and sample.labels.get("service") == "brain"
        and sample.labels.get("stage") == "llm_first_sentence"
    )


# more questions for the bakery call, asked only while one brain replica has answered no turn yet: which replica
# takes a turn is up to JetStream (both pull from one consumer), so four turns can all land on one of them
MORE_QUESTIONS = ("Do you bake rye bread on Sundays?", "Are your cinnamon rolls made with butter?",
                  "Can I order a birthday cake for Friday?", "Do you have gluten free muffins?",
                  "Do you make fresh bagels every morning?", "Do you sell coffee with the pastries?")


async def test_two_calls_two_replicas_no_mixing(platform: Platform, platform_bus: Bus) -> None:
    extra: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    env = dict(os.environ, NATS_URL=platform.nats_url, DATABASE_URL=platform.database_url,
               LLM_BASE_URL=platform.llm_base_url, LOG_FORMAT="json", SHUTDOWN_GRACE_S="3")
    for name in ("stt", "brain"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", f"voice_{name}"], env=dict(env, HTTP_PORT=str(port)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        extra[name] = (proc, port)
    try:
        for name, (proc, port) in extra.items():
            assert _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, 120), f"second {name} not ready"
        stt_ports = [platform.ports["stt"], extra["stt"][1]]
        brain_ports = [platform.ports["brain"], extra["brain"][1]]
        before_stt = sum(handled(p, "stt-utterances") for p in stt_ports)
        before_replies = [replies_streamed(p) for p in brain_ports]

        def turns_per_brain() -> list[float]:
            return [replies_streamed(p) - before for p, before in zip(brain_ports, before_replies, strict=True)]

        a_num, b_num = "+15550201", "+15550202"
        await configure_agent(platform_bus, a_num, first_message="Welcome to the bakery.")
        await configure_agent(platform_bus, b_num, first_message="Welcome to the garage.")
        questions = {
            a_num: [speech("Do you sell chocolate croissants?"), speech("Is the sourdough fresh today?")],
            b_num: [speech("Can you repair my car brakes?"), speech("How much is an oil change?")],
        }
        callers = {n: TwilioCaller(platform.ingress, auth_token=TWILIO_TOKEN, public_base_url=PUBLIC, to=n)
                   for n in (a_num, b_num)}

        kv = await platform_bus.js.key_value("history")
        histories: dict[str, str] = {}

        async def ask(c: TwilioCaller, q: bytes) -> None:
            c.say(q)
            await asyncio.sleep(len(q) / 8000)
            assert await c.wait_for_audio(time.monotonic() + 0.5, 40), "no reply"
            await c.wait_for_silence(1.0, 40)

        async def hang_up(c: TwilioCaller) -> None:
            # the conversation as brain holds it (it is freed once the call ends)
            assert c.call_id
            held = json.loads((await kv.get(subjects.call_key(c.call_id))).value or b"{}")
            said = [m["content"] for m in held.get("messages", []) if m["role"] == "user"]
            histories[c.call_id] = " ".join(said).lower()
            await c.hangup()

        async def converse(number: str) -> str:
            c = callers[number]
            call_id = await c.dial()
            await c.connect()
            assert await c.wait_for_audio(0, 30), "no greeting"
            await c.wait_for_silence(0.8, 30)
            for q in questions[number]:
                await ask(c, q)
            if number == b_num:
                await hang_up(c)
            return call_id

        call_a, call_b = await asyncio.gather(converse(a_num), converse(b_num))
        asked_more = 0
        while min(turns_per_brain()) == 0 and asked_more < len(MORE_QUESTIONS):
            await ask(callers[a_num], speech(MORE_QUESTIONS[asked_more]))
            asked_more += 1
        await hang_up(callers[a_num])
        caller_turns = 4 + asked_more

        conn = await asyncpg.connect(platform.database_url)
        try:
            async def both_stored():  # type: ignore[no-untyped-def]
                rows = await conn.fetch("SELECT call_id, turn_id, text FROM call_turns WHERE speaker = 'caller' "
                                        "AND call_id = ANY($1::text[])", [call_a, call_b])
                return rows if len(rows) >= caller_turns else None

            rows = await poll(both_stored, 30)
            assert rows is not None and len(rows) == caller_turns, f"expected {caller_turns} caller turns: {rows}"
            text = {cid: " ".join(r["text"].lower() for r in rows if r["call_id"] == cid) for cid in (call_a, call_b)}
            # words tiny.en hears reliably on phone audio ("croissant" it does not)
            assert "chocolate" in text[call_a] or "fresh" in text[call_a], text
            assert not any(w in text[call_a] for w in ("brake", "oil", " car")), text
            assert "oil" in text[call_b] or " car" in text[call_b], text
            assert not any(w in text[call_b] for w in ("chocolate", "fresh")), text
            greetings = await conn.fetch("SELECT call_id, text FROM call_turns WHERE speaker = 'agent' "
                                         "AND turn_id = 'greeting' AND call_id = ANY($1::text[])", [call_a, call_b])
            assert {g["call_id"]: g["text"] for g in greetings} == {
                call_a: "Welcome to the bakery.", call_b: "Welcome to the garage."}
        finally:
            await conn.close()

        # each conversation history held only its own caller's words
        for cid, other in ((call_a, "oil"), (call_b, "chocolate")):
            assert histories[cid] and other not in histories[cid]

        # no utterance was transcribed twice: the replicas together acked exactly the caller's utterances
        after_stt = sum(handled(p, "stt-utterances") for p in stt_ports)
        assert after_stt - before_stt == caller_turns
        # each caller turn was answered once, by one replica, and each replica answered some
        per_brain = turns_per_brain()
        assert sum(per_brain) == caller_turns, f"turns answered per brain replica: {per_brain}"
        assert all(n > 0 for n in per_brain), f"a brain replica answered no turn: {per_brain}"
    finally:
        for proc, _ in extra.values():
            proc.terminate()
            proc.wait(15)
