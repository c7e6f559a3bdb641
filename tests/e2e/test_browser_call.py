"""A voice call from the console in a real browser, through the whole platform, judged by what the page received.

Headless Chromium (Debian's) signs in to the console with the tenant admin's API key, opens the agent's talk page
and starts a call; its fake microphone plays a WAV made with piper (``--use-file-for-fake-audio-capture=…%noloop``):
silence through the greeting, a question that gets a long reply, and a second utterance spoken while that reply
plays. The page records the agent's audio as it receives it (``window.receivedAudioWav()``) and stamps it with its
own clock (``window.talkTimeline()``), so the file's offsets and the recording line up (``bench/browser.py``, which
the browser bench phase shares). Judged on that recording, transcribed with the platform's STT model: the greeting
is the agent's first message; the question gets a reply; the barge-in stops the agent's audio in the recording.
Then the call is in the console's calls list and its page shows both speakers' text. One browser call in all.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from playwright.async_api import expect

from bench.browser import (
    MIC_RATE,
    Credentials,
    PageRecording,
    agent_segments,
    build_mic_script,
    caller_utterance,
    launch,
    sign_in,
    talk,
)
from bench.twilio_caller import pcm16_to_ulaw8k

from ..console.conftest import chromium_path, save_artifacts
from .conftest import Platform, poll, transcribe, words
from .rest_call import BOOTSTRAP_KEY, ControlApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FIRST_MESSAGE = "Hello, thanks for calling the bakery. How can I help?"
SYSTEM_PROMPT = (
    "You are a friendly receptionist at a bakery. Always answer with a long, detailed answer of five or six "
    "full sentences."
)
QUESTION = "Can you tell me about all the breads and cakes that you bake every day?"
INTERRUPTION = "Can you tell me about your coffee and your desserts instead"  # no commas: no pause inside it
LEAD_S = 12.0  # silence before the question: connecting, and the whole greeting, even on a busy machine
BARGE_IN_AFTER_S = 8.0  # end of the question -> the interruption: the long reply has begun and is still going
TAIL_S = 10.0  # silence after the interruption (its answer); the file must end in silence
STOP_WITHIN_S = 2.5  # generous: the agent's audio in the recording stops this soon after the interruption begins


async def _agent(api: ControlApi) -> tuple[str, dict[str, Any]]:
    """A tenant and a voice agent through the REST API: the tenant admin's key and the agent."""
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        r = await http.post(
            "/v1/tenants", json={"name": "Browser bakery"}, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
        )
        assert r.status_code == 201, r.text
        key = r.json()["admin_api_key"]
        admin = {"Authorization": f"Bearer {key}"}
        r = await http.post(
            "/v1/agents",
            headers=admin,
            json={
                "name": "Bakery desk",
                "system_prompt": SYSTEM_PROMPT,
                "first_message": FIRST_MESSAGE,
                "llm": {"temperature": 0.2, "max_tokens": 150},
            },
        )
        assert r.status_code == 201, r.text
        agent = r.json()

        async def deployed() -> bool:
            got = await http.get(f"/v1/agents/{agent['id']}/deployment", headers=admin)
            return got.status_code == 200 and bool(got.json()["in_sync"])

        assert await poll(deployed, 15), "control-api did not write the agent to KV"
        return key, agent


def _heard(rec: PageRecording, start: float, end: float) -> str:
    """The recording between two sample indexes, transcribed with the platform's STT model."""
    pcm = np.clip(rec.pcm[max(0, int(start)) : max(0, int(end))], -1, 1)
    return transcribe(pcm16_to_ulaw8k((pcm * 32767).astype(np.int16).tobytes(), rec.rate))


def _sample(rec: PageRecording, offset_s: float) -> float:
    """Where ``offset_s`` of the microphone's file falls in the page's recording (sample index)."""
    wall = rec.mic_wall_ms(offset_s)
    assert wall is not None, "the page did not say when the microphone opened"
    at = rec.sample_at(wall)
    assert at is not None, "the page's recording has no clock"
    return at


async def _stored(api: ControlApi, key: str, call_id: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:

        async def recorded() -> dict[str, Any] | None:
            got = await http.get(f"/v1/calls/{call_id}", headers={"Authorization": f"Bearer {key}"})
            if got.status_code != 200:
                return None
            call: dict[str, Any] = got.json()
            speakers = [t["speaker"] for t in call["turns"]]
            done = call["status"] == "ended" and "caller" in speakers and speakers.count("agent") >= 2
            return call if done else None

        result: dict[str, Any] | None = await poll(recorded, 30)
        return result


async def test_a_call_from_the_console_in_chromium_greets_answers_and_stops_on_barge_in(
    platform: Platform, control_api: ControlApi, request: pytest.FixtureRequest
) -> None:
    exe = chromium_path()
    key, agent = await _agent(control_api)
    question, interruption = caller_utterance(QUESTION), caller_utterance(INTERRUPTION)
    script = build_mic_script([question, interruption], MIC_RATE, lead_s=LEAD_S, gaps_s=[BARGE_IN_AFTER_S, TAIL_S])
    (q_start, q_end), (b_start, b_end) = script.speech

    async with launch(exe, script) as browser:
        ctx = await browser.new_context(base_url=control_api.url)
        ctx.set_default_timeout(30_000)
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            await sign_in(page, control_api.url, Credentials(api_key=key))
            rec = await talk(page, control_api.url, agent["id"], script)
            assert rec.call_id, "the page has no call id"
            status = page.locator("#talk-status")
            # the state attribute, read through the locator: a string predicate (wait_for_function) is evaluated
            # with eval, which the console's CSP (script-src 'self') refuses now and then
            await expect(status).to_have_attribute("data-state", "ended", timeout=30_000)
            tail = f"\n--- ingress log ---\n{platform.log('ingress')[-1500:]}"

            # the page's recording, on the microphone's timeline
            segs = agent_segments(rec.pcm, rec.rate)
            assert segs, f"the page received no agent audio at all{tail}"
            at = {
                name: _sample(rec, s)
                for name, s in (("q_start", q_start), ("q_end", q_end), ("b_start", b_start), ("b_end", b_end))
            }
            assert at["b_end"] <= len(rec.pcm), "the recording ended before the microphone's file did"

            # 1. the greeting is the first audio, over before the question, and it is the agent's first message
            assert segs[0][0] < at["q_start"], f"no greeting before the question: {segs[:3]}"
            assert not any(s < at["q_start"] < e for s, e in segs), (
                f"the greeting was still playing when the question began ({LEAD_S} s of silence first)"
            )
            greeting = _heard(rec, 0, at["q_start"])
            expected = words(FIRST_MESSAGE)
            assert len(words(greeting) & expected) >= len(expected) // 2, greeting

            # 2. the question gets a spoken reply: agent speech after the question, before the interruption
            replies = [(s, e) for s, e in segs if at["q_end"] <= s < at["b_start"]]
            assert replies, f"no reply to the question in the recording{tail}"
            reply = _heard(rec, replies[0][0], at["b_start"])
            assert words(reply), "the reply transcribes to nothing"

            # 3. the barge-in: the reply was playing when the interruption began, and in the recording it stops
            #    soon after, and stays silent while the caller speaks (nothing more of the old reply)
            playing = [(s, e) for s, e in segs if s <= at["b_start"] < e]
            assert playing, (
                f"the reply was not playing when the interruption began {BARGE_IN_AFTER_S} s after the question "
                f"(agent audio: {[(round(s / rec.rate, 1), round(e / rec.rate, 1)) for s, e in segs]})"
            )
            stopped_after_s = (playing[0][1] - at["b_start"]) / rec.rate
            assert stopped_after_s < STOP_WITHIN_S, (
                f"the agent's audio went on {stopped_after_s:.2f} s after the caller began to speak"
            )
            resumed = [round((s - at["b_start"]) / rec.rate, 2) for s, _ in segs if playing[0][1] <= s < at["b_end"]]
            assert not resumed, f"agent audio came back while the caller was still speaking, at {resumed} s"
        except BaseException:
            await save_artifacts(ctx, request.node.nodeid)
            raise

        # 4. the call is a normal call: in the calls list, and its page shows both speakers' text
        call = await _stored(control_api, key, rec.call_id)
        assert call, f"the call was not stored with both speakers\n{platform.log('analytics')[-2000:]}"
        assert call["channel"] == "webrtc" and call["end_reason"] == "caller_hangup"
        agent_turns = [t for t in call["turns"] if t["speaker"] == "agent"]
        assert agent_turns[0]["text"] == FIRST_MESSAGE
        assert any(t["interrupted"] for t in agent_turns[1:]), "the platform did not mark the reply interrupted"
        caller_text = " ".join(t["text"] for t in call["turns"] if t["speaker"] == "caller")
        assert words(caller_text) & {"breads", "cakes", "bake", "coffee", "desserts"}, caller_text
        try:
            await page.goto("/calls")
            await page.locator(f'tr[data-call-id="{rec.call_id}"] a').click()
            await page.wait_for_url(f"**/calls/{rec.call_id}")
            caller_shown = await page.get_by_test_id("turn-caller").all_inner_texts()
            agent_shown = await page.get_by_test_id("turn-agent").all_inner_texts()
            assert any(FIRST_MESSAGE in t for t in agent_shown), agent_shown
            assert any(words(t) & {"breads", "cakes", "bake"} for t in caller_shown), caller_shown
            assert await page.get_by_test_id("interrupted").count() >= 1
            assert not errors, errors
        except BaseException:
            await save_artifacts(ctx, request.node.nodeid)
            raise
        finally:
            await ctx.close()
