"""Text chat from the console page in a real browser: the question typed into the page gets the agent's reply, and
the chat is stored as a call whose page shows both speakers.

The data plane a chat needs runs as processes on the console server's NATS and database (ingress, brain, analytics),
with brain's model an OpenAI-protocol server scripted by the test, so the reply is known. The voice (WebRTC) page's
browser test is not here yet: it needs piper-made microphone audio and the platform's STT to judge what the page
received (see tests/e2e for the call path itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from voice_control_api.service import ControlApiService
from voice_control_api.settings import ControlApiSettings
from voice_devstack.stack import SERVICES

from ..brain.fake_openai import FakeOpenAI, Script
from ..conftest import free_port
from ..control_api.helpers import PASSWORD, bearer, ok
from .conftest import CALL_TOKEN_KEY, ConsoleServer, Tenant, sign_in, stop, wait_ready

CHAT_ROUTE = "/v1/agents/{agent_id}/chats"
STACK = ("ingress", "brain", "analytics")
GREETING = "Hello, this is the bakery. What can I do for you?"
ANSWER = "We open at eight in the morning. See you then!"
QUESTION = "When do you open tomorrow?"


def _has_chat_route() -> bool:
    return CHAT_ROUTE in ControlApiService(ControlApiSettings()).app().openapi()["paths"]


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not _has_chat_route(), reason=f"control-api has no {CHAT_ROUTE} yet"),
]


@pytest.fixture(scope="module")
def data_plane(console_server: ConsoleServer) -> Iterator[FakeOpenAI]:
    """ingress, brain and analytics on the console server's NATS and database; brain's LLM answers ANSWER."""
    tmp = Path(tempfile.mkdtemp(prefix="voice-console-chat-"))
    llm = FakeOpenAI(script=Script(text=ANSWER, token_delay_s=0.0))
    llm.start()
    module = {name: mod for name, mod, _ in SERVICES}
    env = dict(
        os.environ,
        NATS_URL=console_server.nats_url,
        DATABASE_URL=console_server.database_url,
        LLM_BASE_URL=llm.base_url,
        LLM_MODEL="fake",
        LOG_FORMAT="json",
        SHUTDOWN_GRACE_S="3",
        STATE_DIR=str(tmp),
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in STACK:
            port = free_port()
            log = tmp / f"{name}.log"
            extra = {"CALL_TOKEN_KEY": CALL_TOKEN_KEY} if name == "ingress" else {}
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module[name]],
                    env=dict(env, HTTP_PORT=str(port), **extra),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}", proc, log, timeout=120)
        yield llm
    finally:
        for proc in reversed(procs):
            stop(proc)
        llm.stop()


async def test_a_question_typed_into_the_chat_page_gets_the_agents_reply_and_is_stored(
    page: Page, console_server: ConsoleServer, tenants: dict[str, Tenant], data_plane: FakeOpenAI
) -> None:
    t = tenants["A"]
    async with httpx.AsyncClient(base_url=console_server.url) as http:
        agent = await ok(
            await http.post(
                "/v1/agents",
                headers=bearer(t.admin_key),
                json={"name": "Bakery", "system_prompt": "You are the bakery's assistant.", "first_message": GREETING},
            ),
            201,
        )
    await sign_in(page, t.admin_email, PASSWORD)
    await page.goto(f"/agents/{agent['id']}")
    await page.get_by_role("link", name="Chat (text)").click()
    await page.get_by_role("button", name="Start chat").click()
    agent_turns = page.get_by_test_id("chat-agent")
    await expect(agent_turns.first).to_have_text(re.compile(re.escape(GREETING)), timeout=30_000)

    await page.get_by_label("Message").fill(QUESTION)
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-caller")).to_contain_text(QUESTION)
    await expect(agent_turns.nth(1)).to_contain_text(ANSWER, timeout=30_000)
    assert data_plane.requests[-1]["messages"][-1]["content"] == QUESTION  # the question reached the agent's model

    await page.get_by_role("button", name="End chat").click()
    await expect(page.locator("#chat")).to_have_attribute("data-state", "ended")
    await page.locator("#chat-call-link").click()
    await expect(page).to_have_url(re.compile(r"/calls/"))
    # analytics records the chat from the bus: the page refreshes itself until the call has ended
    await expect(page.get_by_test_id("call-status")).to_contain_text("ended", timeout=30_000)
    await expect(page.get_by_test_id("turn-caller")).to_contain_text(QUESTION)
    await expect(page.get_by_test_id("turn-agent").last).to_contain_text(ANSWER)
