"""The web console in a real browser (Debian's Chromium through Playwright) against control-api as a process:
signing in, agents and their versions, numbers, API keys, roles and tenants, CSRF, calls."""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.async_api import Page, expect

from ..control_api.helpers import BOOTSTRAP_KEY, PASSWORD, bearer, unique_number
from .conftest import ADMIN_EMAIL, ConsoleServer, Tenant, in_page_fetch, sign_in, sign_in_with_key

pytestmark = pytest.mark.e2e


async def test_first_run_admin_signs_in_and_finds_the_default_agent(
    page: Page, console_server: ConsoleServer, admin_password: str
) -> None:
    mode = stat.S_IMODE(os.stat(console_server.password_file).st_mode)
    assert mode == 0o600, oct(mode)
    assert admin_password not in console_server.log.read_text(), "the generated password reached the log"

    await sign_in(page, ADMIN_EMAIL, admin_password)
    await expect(page.get_by_test_id("who")).to_have_text(ADMIN_EMAIL)
    row = page.locator("tr[data-agent-id=default-agent]")
    await expect(row).to_contain_text("Default agent")
    nav = page.get_by_role("navigation", name="Main")
    for item in ("Users", "API keys", "Webhooks", "Tenants"):
        await expect(nav.get_by_role("link", name=item, exact=True)).to_be_visible()

    await row.get_by_role("link", name="Default agent").click()
    await expect(page.get_by_test_id("current-version")).to_have_text("v1")
    await expect(page.get_by_text("in sync")).to_be_visible()  # published to KV like any agent

    me = await in_page_fetch(page, "GET", "/v1/auth/me")
    assert me["status"] == 200 and me["body"]["platform_admin"] is True and me["body"]["actor_type"] == "user"


async def test_wrong_password_is_refused_and_pages_need_a_session(page: Page, admin_password: str) -> None:
    await page.goto("/calls?status=ended")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fcalls%3Fstatus%3Dended$"))
    form = page.locator("#password-form")
    await form.locator("input[name=email]").fill(ADMIN_EMAIL)
    await form.locator("input[name=password]").fill(admin_password + "x")
    await form.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("invalid email or password")
    await expect(page).to_have_url(re.compile(r"/login$"))
    # the right password brings the viewer to the page it asked for
    await form.locator("input[name=password]").fill(admin_password)
    await form.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/calls\?status=ended$"))


async def test_sign_in_with_an_api_key_then_sign_out(page: Page, tenants: dict[str, Tenant]) -> None:
    await sign_in_with_key(page, tenants["A"].admin_key)
    await expect(page.get_by_test_id("who")).to_contain_text("API key initial admin key")
    for agent in tenants["A"].ids["agent_admin"], tenants["A"].ids["agent_sup"]:
        await expect(page.locator(f"tr[data-agent-id='{agent}']")).to_be_visible()
    for agent in tenants["B"].ids["agent_admin"], "default-agent":  # nobody else's
        await expect(page.locator(f"tr[data-agent-id='{agent}']")).to_have_count(0)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login\?notice=signed-out$"))
    await page.goto("/agents")
    await expect(page).to_have_url(re.compile(r"/login"))
    assert (await in_page_fetch(page, "GET", "/v1/auth/me", csrf=False))["status"] == 401


async def test_create_edit_and_restore_an_agent(page: Page, tenants: dict[str, Tenant]) -> None:
    t = tenants["A"]
    await sign_in(page, t.admin_email, PASSWORD)
    await page.get_by_role("link", name="New agent").click()
    await page.locator("#name").fill("Dental front desk")
    await page.locator("#system_prompt").fill("You are the front desk of a dental practice.")
    await page.locator("#first_message").fill("Hello, dental practice, how can I help?")
    await page.get_by_role("button", name="Create agent").click()
    await expect(page.get_by_role("status")).to_have_text("Agent created (version 1).")
    await expect(page.get_by_test_id("current-version")).to_have_text("v1")
    agent_id = page.url.rsplit("/", 1)[1]

    await page.get_by_role("link", name="Edit", exact=True).click()
    await page.locator("#first_message").fill("Good morning, how can I help?")
    await page.locator("#llm\\.temperature").fill("0.3")
    await page.get_by_role("button", name="Save as a new version").click()
    await expect(page.get_by_role("status")).to_have_text("Saved as a new version.")
    await expect(page.get_by_test_id("current-version")).to_have_text("v2")
    versions = page.get_by_test_id("versions")
    await expect(versions.locator("tr[data-version]")).to_have_count(2)
    await expect(versions.locator("tr[data-version='2']")).to_contain_text("Good morning")

    page.on("dialog", lambda dialog: dialog.accept())
    await versions.locator("tr[data-version='1']").get_by_role("button", name="Restore").click()
    await expect(page.get_by_role("status")).to_have_text("Restored as a new version.")
    await expect(page.get_by_test_id("current-version")).to_have_text("v3")
    await expect(versions.locator("tr[data-version]")).to_have_count(3)
    await expect(page.get_by_text("Hello, dental practice, how can I help?").first).to_be_visible()

    api = (await in_page_fetch(page, "GET", f"/v1/agents/{agent_id}"))["body"]
    assert api["version"] == 3 and api["first_message"] == "Hello, dental practice, how can I help?"
    assert api["llm"]["temperature"] == 0.6  # v1's value came back with it

    # tools: a refused one is explained next to the field and kept; a good one is saved in a new version
    await page.get_by_role("link", name="Edit", exact=True).click()
    bad = '[{"type": "http", "name": "lookup", "url": "http://127.0.0.1/bookings"}]'
    await page.locator("#tools").fill(bad)
    await page.get_by_role("button", name="Save as a new version").click()
    await expect(page.get_by_test_id("tools-errors")).to_contain_text("tools.0.url")
    await expect(page.get_by_test_id("tools-errors")).to_contain_text("internal address")
    await expect(page.locator("#tools")).to_have_value(bad)
    await page.locator("#tools").fill("[{not json")
    await page.get_by_role("button", name="Save as a new version").click()
    await expect(page.get_by_test_id("tools-errors")).to_contain_text("not valid JSON")
    good = (
        '[{"type": "http", "name": "find_booking", "method": "GET", "url": "https://api.example.com/b/{ref}",'
        ' "parameters": {"type": "object", "properties": {"ref": {"type": "string"}}}}]'
    )
    await page.locator("#tools").fill(good)
    await page.get_by_role("button", name="Save as a new version").click()
    await expect(page.get_by_role("status")).to_have_text("Saved as a new version.")
    await expect(page.get_by_test_id("current-version")).to_have_text("v4")
    await expect(page.get_by_test_id("tools")).to_have_text("find_booking (http)")
    api = (await in_page_fetch(page, "GET", f"/v1/agents/{agent_id}"))["body"]
    assert [(t["type"], t["name"], t["url"]) for t in api["tools"]] == [
        ("http", "find_booking", "https://api.example.com/b/{ref}")
    ]
    await page.get_by_role("link", name="Edit", exact=True).click()  # the field shows what was saved
    assert '"find_booking"' in await page.locator("#tools").input_value()


async def test_a_refused_form_shows_why_and_keeps_the_input(page: Page, tenants: dict[str, Tenant]) -> None:
    await sign_in(page, tenants["A"].admin_email, PASSWORD)
    await page.goto("/agents/new")
    await page.locator("#name").fill("Bad temperature")
    await page.locator("#llm\\.temperature").evaluate("el => { el.type = 'text'; el.value = '7'; }")
    await page.get_by_role("button", name="Create agent").click()
    await expect(page.get_by_role("alert")).to_contain_text("llm.temperature")
    await expect(page.locator("#name")).to_have_value("Bad temperature")


async def test_bind_a_number_to_an_agent(page: Page, tenants: dict[str, Tenant]) -> None:
    t = tenants["A"]
    number = unique_number()
    await sign_in(page, t.admin_email, PASSWORD)
    await page.goto("/numbers")
    await page.locator("#number").fill(number)
    await page.locator("#agent_id").select_option(t.ids["agent_admin"])
    await page.get_by_role("button", name="Add number").click()
    await expect(page.get_by_role("status")).to_have_text("Number added.")
    row = page.locator(f"tr[data-number='{number}']")
    await expect(row).to_contain_text("Tenant A front desk")

    await row.locator("select").select_option(t.ids["agent_sup"])
    await row.get_by_role("button", name="Bind").click()
    await expect(page.get_by_role("status")).to_have_text("Number saved.")
    await expect(page.locator(f"tr[data-number='{number}']")).to_contain_text("Tenant A supervised")
    listed = await in_page_fetch(page, "GET", f"/v1/phone-numbers?number={number.replace('+', '%2B')}")
    assert [n["agent_id"] for n in listed["body"]["items"]] == [t.ids["agent_sup"]]


async def test_api_key_is_shown_once_and_revoked(
    page: Page, tenants: dict[str, Tenant], console_server: ConsoleServer
) -> None:
    await sign_in(page, tenants["A"].admin_email, PASSWORD)
    await page.goto("/api-keys")
    await page.locator("#key-name").fill("ci robot")
    await page.get_by_role("button", name="Create key").click()
    key = (await page.get_by_test_id("new-key").text_content() or "").strip()
    assert key.startswith("vk_")
    async with httpx.AsyncClient(base_url=console_server.url) as http:
        assert (await http.get("/v1/auth/me", headers=bearer(key))).status_code == 200
        await page.goto("/api-keys")  # shown once: never again
        await expect(page.get_by_test_id("new-key")).to_have_count(0)
        assert key not in await page.content()

        page.on("dialog", lambda dialog: dialog.accept())
        await page.locator("tr[data-key-name='ci robot']").get_by_role("button", name="Revoke").click()
        await expect(page.get_by_role("status")).to_have_text("API key revoked.")
        assert (await http.get("/v1/auth/me", headers=bearer(key))).status_code == 401
    await page.get_by_role("link", name="Show revoked").click()
    await expect(page.locator("tr[data-key-name='ci robot']")).to_contain_text("revoked")


async def test_supervisor_sees_neither_admin_pages_nor_other_calls(page: Page, tenants: dict[str, Tenant]) -> None:
    a, b = tenants["A"], tenants["B"]
    await sign_in(page, a.sup_email, PASSWORD)
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Agents")).to_be_visible()
    for item in ("Users", "API keys", "Webhooks", "Tenants"):
        await expect(nav.get_by_role("link", name=item, exact=True)).to_have_count(0)
    await expect(page.locator("tr[data-agent-id]")).to_have_count(1)
    await expect(page.locator(f"tr[data-agent-id='{a.ids['agent_sup']}']")).to_be_visible()

    # the pages
    for path in ("/users", "/api-keys", "/webhooks", "/tenants"):
        response = await page.goto(path)
        assert response is not None and response.status == 403, path
        await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    await page.goto("/calls")
    await expect(page.locator("tr[data-call-id]")).to_have_count(1)
    await expect(page.locator(f"tr[data-call-id='{a.ids['call_sup']}']")).to_be_visible()
    for call in (a.ids["call_admin"], b.ids["call_sup"], b.ids["call_admin"]):
        response = await page.goto(f"/calls/{call}")
        assert response is not None and response.status == 404, call
        assert "Caller question" not in await page.content()
    response = await page.goto(f"/agents/{b.ids['agent_sup']}")
    assert response is not None and response.status == 404

    # the requests under them
    await page.goto("/agents")
    for method, path, body in (
        ("GET", "/v1/users", None),
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", {"name": "sneaky"}),
        ("POST", "/v1/tenants", {"name": "sneaky"}),
        ("GET", "/v1/webhooks", None),
    ):
        assert (await in_page_fetch(page, method, path, body))["status"] == 403, (method, path)
    for call in (a.ids["call_admin"], b.ids["call_sup"]):
        assert (await in_page_fetch(page, "GET", f"/v1/calls/{call}"))["status"] == 404
    listed = (await in_page_fetch(page, "GET", "/v1/calls"))["body"]
    assert [c["id"] for c in listed["items"]] == [a.ids["call_sup"]]
    # a console form posted straight to an admin route is refused too
    posted = await page.request.post(
        "/users", form={"csrf_token": await csrf(page), "email": "x@example.com", "password": PASSWORD}
    )
    assert posted.status == 403


async def csrf(page: Page) -> str:
    return await page.locator('meta[name="csrf-token"]').get_attribute("content") or ""


async def test_state_changes_need_the_csrf_token(
    page: Page, tenants: dict[str, Tenant], console_server: ConsoleServer
) -> None:
    await sign_in(page, tenants["A"].admin_email, PASSWORD)
    token = await csrf(page)
    assert token

    # the API with the session cookie: refused without the header or with a wrong one, accepted with it
    refused = await in_page_fetch(page, "POST", "/v1/agents", {"name": "csrf probe"}, csrf=False)
    assert refused["status"] == 403 and "CSRF" in refused["body"]["detail"]
    wrong = await page.request.post("/v1/agents", data={"name": "csrf probe"}, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status == 403
    accepted = await in_page_fetch(page, "POST", "/v1/agents", {"name": "csrf probe"})
    assert accepted["status"] == 201
    # reads need no token
    assert (await in_page_fetch(page, "GET", "/v1/agents", csrf=False))["status"] == 200

    # console forms
    no_token = await page.request.post("/agents/new", form={"name": "forged"})
    assert no_token.status == 403
    forged = await page.request.post("/agents/new", form={"name": "forged", "csrf_token": "f" * 64})
    assert forged.status == 403
    agents = (await in_page_fetch(page, "GET", "/v1/agents?name=forged"))["body"]["items"]
    assert agents == []
    signed_out = await page.request.post("/logout", form={})
    assert signed_out.status == 403
    assert (await in_page_fetch(page, "GET", "/v1/auth/me"))["status"] == 200  # still signed in

    # the sign-in form has its own token (no session yet)
    async with httpx.AsyncClient(base_url=console_server.url) as http:
        anonymous = await http.post("/login", data={"method": "password", "email": ADMIN_EMAIL, "password": "x"})
        assert anonymous.status_code == 403
        assert "voice_session" not in anonymous.cookies


async def test_calls_list_filters_and_detail_shows_both_speakers(page: Page, tenants: dict[str, Tenant]) -> None:
    t = tenants["A"]
    await sign_in(page, t.admin_email, PASSWORD)
    sup_call = page.locator(f"tr[data-call-id='{t.ids['call_sup']}']")
    admin_call = page.locator(f"tr[data-call-id='{t.ids['call_admin']}']")
    await page.goto("/calls")
    await expect(sup_call).to_be_visible()
    await expect(admin_call).to_be_visible()
    await page.locator("#f-agent").select_option(t.ids["agent_sup"])  # htmx swaps the table in
    await expect(admin_call).to_have_count(0)
    await expect(page.locator("tr[data-call-id]")).to_have_count(1)
    await expect(page).to_have_url(re.compile(rf"agent_id={t.ids['agent_sup']}"))
    await page.locator("#f-status").select_option("in_progress")
    await expect(page.locator("tr[data-call-id]")).to_have_count(0)
    await page.goto("/calls?date_from=2000-01-01&date_to=2000-01-02")
    await expect(page.locator("tr[data-call-id]")).to_have_count(0)
    today = datetime.now(UTC).date()
    await page.goto(f"/calls?status=ended&date_from={today - timedelta(days=1)}&date_to={today}")
    await expect(sup_call).to_be_visible()

    await page.goto(f"/calls?agent_id={t.ids['agent_sup']}")
    await page.locator(f"tr[data-call-id='{t.ids['call_sup']}'] a").click()
    await expect(page.get_by_test_id("turn-caller")).to_contain_text("Caller question for Tenant A supervised?")
    agent_turns = page.get_by_test_id("turn-agent")
    await expect(agent_turns).to_have_count(2)
    await expect(agent_turns.nth(1)).to_contain_text("Agent answer from Tenant A supervised.")
    await expect(agent_turns.nth(1).get_by_test_id("interrupted")).to_be_visible()
    await expect(page.get_by_test_id("interruptions")).to_have_text("1")
    await expect(page.get_by_test_id("end-reason")).to_have_text("caller_hangup")
    bars = agent_turns.nth(1).get_by_test_id("latency").locator("tr[data-stage]")
    stages = [await r.get_attribute("data-stage") for r in await bars.all()]
    assert stages == [
        "end_of_turn_ms",
        "stt_ms",
        "llm_first_token_ms",
        "llm_first_sentence_ms",
        "tts_first_audio_ms",
        "voice_to_voice_ms",
    ]
    await expect(bars.first).to_contain_text("240 ms")


async def test_platform_admin_creates_a_tenant_and_sees_its_key_once(page: Page, admin_password: str) -> None:
    await sign_in(page, ADMIN_EMAIL, admin_password)
    await page.goto("/tenants")
    await page.locator("#tenant-name").fill("Console tenant")
    await page.get_by_role("button", name="Create tenant").click()
    key = (await page.get_by_test_id("tenant-key").text_content() or "").strip()
    assert key.startswith("vk_")
    await expect(page.get_by_test_id("tenants")).to_contain_text("Console tenant")
    await page.reload()
    await expect(page.get_by_test_id("tenant-key")).to_have_count(0)


async def test_bootstrap_key_signs_in_as_platform_admin(page: Page) -> None:
    await sign_in_with_key(page, BOOTSTRAP_KEY)
    await expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Tenants")).to_be_visible()
