"""Browser tests of the web console: control-api as a real process on a new database (so its first run makes the
admin and the default agent), a NATS server of its own, two tenants seeded through the API, and Debian's Chromium
driven by Playwright (never a downloaded browser).

A failing test leaves a screenshot (and the HTML) of every page it had open in ``TEST_ARTIFACTS_DIR`` (default: a
``voice-test-artifacts`` folder in the system's temporary directory).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from voice_devstack.stack import embedded_nats

from ..conftest import free_port
from ..control_api.helpers import BOOTSTRAP_KEY, PASSWORD, SECRETS_KEY, bearer, insert_call, ok, unique_email

ADMIN_EMAIL = "admin@example.com"
CALL_TOKEN_KEY = base64.b64encode(os.urandom(32)).decode()  # control-api mints browser/chat call grants with it
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(tempfile.gettempdir()) / "voice-test-artifacts")


def chromium_path() -> str:
    """Debian's Chromium (``CHROMIUM_PATH`` to use another build). `make test` installs it when it can."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "Chromium is missing: the browser tests need Debian's chromium package (apt-get install chromium), "
            "or CHROMIUM_PATH set to a Chromium binary",
            pytrace=False,
        )
    return path


# ------------------------------------------------------------------ control-api as a process
@dataclass
class ConsoleServer:
    url: str
    database_url: str
    nats_url: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    @property
    def password_file(self) -> Path:
        return self.state_dir / "admin-password"


def server_env(database_url: str, nats_url: str, port: int, state: Path, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        CONTROL_API_HTTP_PORT=str(port),
        BOOTSTRAP_ADMIN_KEY=BOOTSTRAP_KEY,
        BOOTSTRAP_ADMIN_EMAIL=ADMIN_EMAIL,
        BOOTSTRAP_ADMIN_PASSWORD_FILE=str(state / "admin-password"),
        SECRETS_KEY=SECRETS_KEY,
        CALL_TOKEN_KEY=CALL_TOKEN_KEY,
        RATE_LIMIT_PER_S="10000",
        RATE_LIMIT_BURST="1000000",
        PASSWORD_HASH_TIME_COST="1",
        PASSWORD_HASH_MEMORY_KIB="8192",
        KV_RECONCILE_INTERVAL_S="0",
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        SHUTDOWN_GRACE_S="3",
        STATE_DIR=str(state),
        **extra,
    )


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "voice_control_api"], env=env, stdout=out, stderr=out)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"control-api did not start:\n{log.read_text(errors='replace')[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def console_nats() -> Iterator[str]:
    """A NATS server of our own: control-api's KV resync makes the buckets match its database."""
    with embedded_nats() as url:
        yield url


@pytest.fixture(scope="session")
def console_database(postgres_server: str) -> Iterator[str]:
    """A new database: control-api's first run happens on it."""
    name = f"voice_test_console_{os.getpid()}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    yield f"{postgres_server}/{name}"
    with contextlib.suppress(Exception):
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def console_server(console_database: str, console_nats: str) -> Iterator[ConsoleServer]:
    state = Path(tempfile.mkdtemp(prefix="voice-console-"))
    port = free_port()
    env = server_env(console_database, console_nats, port, state)
    log = state / "control-api.log"
    proc = start_server(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield ConsoleServer(url, console_database, console_nats, state, proc, log, env)
    finally:
        stop(proc)
        shutil.rmtree(state, ignore_errors=True)


# ------------------------------------------------------------------ two tenants
@dataclass
class Tenant:
    id: str
    admin_key: str
    admin_email: str = ""
    sup_email: str = ""
    sup_id: str = ""
    ids: dict[str, str] = field(default_factory=dict)


async def seed_tenant(http: httpx.AsyncClient, server: ConsoleServer, name: str) -> Tenant:
    """A tenant with an admin and a supervisor (password PASSWORD), an admin-owned and a supervisor-owned agent,
    and one ended call of each agent with both speakers' turns."""
    body = await ok(await http.post("/v1/tenants", json={"name": name}, headers=bearer(BOOTSTRAP_KEY)), 201)
    t = Tenant(id=body["id"], admin_key=body["admin_api_key"])
    admin = bearer(t.admin_key)
    for role in ("admin", "supervisor"):
        email = unique_email(role)
        user = await ok(
            await http.post(
                "/v1/users", json={"email": email, "role": role, "password": PASSWORD, "name": role}, headers=admin
            ),
            201,
        )
        if role == "admin":
            t.admin_email = email
        else:
            t.sup_email, t.sup_id = email, user["id"]
    agent_admin = await ok(await http.post("/v1/agents", json={"name": f"{name} front desk"}, headers=admin), 201)
    agent_sup = await ok(
        await http.post("/v1/agents", json={"name": f"{name} supervised", "owner_user_id": t.sup_id}, headers=admin),
        201,
    )
    t.ids.update(agent_admin=agent_admin["id"], agent_sup=agent_sup["id"])
    for key, agent in (("call_admin", agent_admin), ("call_sup", agent_sup)):
        t.ids[key] = await insert_call(
            server.database_url,
            tenant_id=t.id,
            agent_id=agent["id"],
            turns=[
                {"turn_id": "t0", "speaker": "agent", "text": f"Hello from {agent['name']}."},
                {"turn_id": "t1", "speaker": "caller", "text": f"Caller question for {agent['name']}?"},
                {
                    "turn_id": "t1",
                    "speaker": "agent",
                    "text": f"Agent answer from {agent['name']}.",
                    "interrupted": True,
                    "latency": {
                        "end_of_turn_ms": 240.0,
                        "stt_ms": 180.0,
                        "llm_first_token_ms": 150.0,
                        "llm_first_sentence_ms": 310.0,
                        "tts_first_audio_ms": 62.0,
                        "voice_to_voice_ms": 812.0,
                    },
                },
            ],
        )
    return t


@pytest.fixture(scope="session")
async def tenants(console_server: ConsoleServer) -> dict[str, Tenant]:
    async with httpx.AsyncClient(base_url=console_server.url, timeout=30) as http:
        return {name: await seed_tenant(http, console_server, f"Tenant {name}") for name in ("A", "B")}


@pytest.fixture(scope="session")
def admin_password(console_server: ConsoleServer) -> str:
    """The first admin's password, which the first run generated and wrote to its file."""
    return console_server.password_file.read_text().strip()


# ------------------------------------------------------------------ the browser
@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    args = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",  # a fake microphone (a beep), as headless has none
        "--autoplay-policy=no-user-gesture-required",
        # WebRTC on one machine: real host addresses (not mDNS names) and loopback in the candidates
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield b
        finally:
            await b.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # the context fixture looks at rep_call
    return report


@pytest.fixture
async def context(
    browser: Browser, console_server: ConsoleServer, request: pytest.FixtureRequest
) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (no cookies) per test; on failure, a screenshot and the HTML of each open page. A
    script error or a Content-Security-Policy violation on any page fails the test that caused it."""
    ctx = await browser.new_context(base_url=console_server.url)
    ctx.set_default_timeout(15_000)
    script_errors: list[str] = []

    def watch(pg: Page) -> None:
        pg.on("pageerror", lambda error: script_errors.append(f"{pg.url}: {error}"))
        pg.on(
            "console",
            lambda msg: (
                script_errors.append(f"{pg.url}: {msg.text}")
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )

    ctx.on("page", watch)
    try:
        yield ctx
        assert not script_errors, "errors in the pages' scripts:\n" + "\n".join(script_errors)
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            await save_artifacts(ctx, request.node.nodeid)
        await ctx.close()


async def save_artifacts(ctx: BrowserContext, nodeid: str) -> None:
    """A screenshot and the HTML of every page open in ``ctx``, under ``ARTIFACTS`` (also used by browser tests
    outside this folder, which call it when they fail)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-120:]
    for i, pg in enumerate(ctx.pages):
        with contextlib.suppress(Exception):
            shot = ARTIFACTS / f"{stem}-{i}.png"
            await pg.screenshot(path=str(shot), full_page=True)
            (ARTIFACTS / f"{stem}-{i}.html").write_text(await pg.content())
            print(f"screenshot of {pg.url}: {shot}")


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


async def sign_in(page: Page, email: str, password: str) -> None:
    await page.goto("/login")
    form = page.locator("#password-form")
    await form.locator("input[name=email]").fill(email)
    await form.locator("input[name=password]").fill(password)
    await form.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r".*/agents$"))


async def sign_in_with_key(page: Page, key: str) -> None:
    await page.goto("/login")
    form = page.locator("#api-key-form")
    await form.locator("input[name=api_key]").fill(key)
    await form.get_by_role("button", name="Sign in with the key").click()
    await page.wait_for_url(re.compile(r".*/agents$"))


async def in_page_fetch(page: Page, method: str, path: str, body: Any = None, csrf: bool = True) -> dict[str, Any]:
    """A request the page's own scripts could make (its cookies; the CSRF header unless ``csrf`` is false):
    status and JSON body."""
    return await page.evaluate(
        """async ([method, path, body, csrf]) => {
            const headers = {};
            if (csrf) headers["X-CSRF-Token"] = document.querySelector('meta[name="csrf-token"]').content;
            if (body !== null) headers["Content-Type"] = "application/json";
            const res = await fetch(path, {method, headers, credentials: "same-origin",
                                           body: body === null ? undefined : JSON.stringify(body)});
            const text = await res.text();
            let json = null;
            try { json = JSON.parse(text); } catch (e) {}
            return {status: res.status, body: json};
        }""",
        [method, path, body, csrf],
    )
