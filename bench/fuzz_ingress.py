"""Fuzzed Twilio traffic at a running ingress: generated Media Streams messages and webhook bodies.

Hypothesis strategies make what a broken or hostile Twilio peer could send: valid-looking ``connected`` /
``start`` / ``media`` / ``mark`` / ``dtmf`` / ``stop`` messages with fields of the wrong type, NaN and Infinity,
huge strings, bad base64, unknown events, the wrong order (media before start, a second start, a start for an
unknown call or for a call that is already connected), truncated and deeply nested JSON, binary frames and frames
far over the message limit; and webhook bodies (form fields, raw bytes, invalid percent-encoding, odd content
types, bodies over the limit sent with and without a Content-Length, missing, wrong and valid signatures).

The cases are generated first (``generate``: Hypothesis' generate phase only, so a run is a fixed volume of
distinct cases from a seed) and then driven over real connections (``drive``): one WebSocket per script, a few
messages each, many scripts at a time, and webhook POSTs on a shared HTTP connection pool. What comes back is
counted (``FuzzCounts``): messages sent, connections, HTTP statuses, WebSocket close codes. Ingress must answer
each with a refusal (403, 413, a 1008 close), never crash, and keep serving the calls it holds.

``make bench-fuzz`` runs the volume (bench/fuzz.py, 100,000 messages during a real call);
tests/fuzz/test_ingress_fuzz.py a few thousand in ``make test``. As a process, it is the load generator of the
bench, kept off the real caller's event loop:

    python -m bench.fuzz_ingress --url http://127.0.0.1:8080 --messages 100000 --auth-token ... --out counts.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

Frame = str | bytes  # one WebSocket message: text (JSON, or not) or binary
SILENCE_B64 = base64.b64encode(b"\xff" * 160).decode()
EVENTS = ("connected", "start", "media", "mark", "dtmf", "stop")
TWILIO_FIELDS = ("CallSid", "AccountSid", "From", "To", "CallStatus", "Direction", "ApiVersion", "CallerName",
                 "ForwardedFrom", "Digits", "SpeechResult")
MAX_BODY = 64 * 1024  # ingress' default max_webhook_body_bytes: bodies around it probe the limit
MAX_MESSAGE = 16 * 1024  # ingress' default max_ws_message_bytes
VERDICT_WAIT_S = 0.5  # after its last frame, a connection waits this long for ingress to close it


# ---------------------------------------------------------------------------- strategies: JSON values
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=40))
json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
# what a call id in ``start`` may be: unknown ids, empty, subject wildcards and dots, very long, not a string
_call_ids = (st.uuids().map(lambda u: u.hex) | st.just("") | st.sampled_from(["a.b", "*", ">", "c.*.x", "../"])
             | st.text(min_size=1, max_size=60) | st.text(min_size=200, max_size=2000) | json_values)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_payloads = (st.just(SILENCE_B64) | st.binary(max_size=480).map(_b64) | st.text(max_size=300)
             | st.sampled_from(["", "=", "AAA", "not base64!", "////", "%%%%"]) | json_values)


def _msg(event: Any, body_key: str | None = None, body: Any = None, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"event": event, "sequenceNumber": "1", "streamSid": "MZ" + "0" * 32, **extra}
    if body_key is not None:
        m[body_key] = body
    return m


def _start_strategy(call_ids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    fmt = st.fixed_dictionaries({}, optional={
        "encoding": st.sampled_from(["audio/x-mulaw", "audio/x-alaw", "audio/l16"]) | json_values,
        "sampleRate": st.sampled_from([8000, 16000, 0, -1, 10**30]) | st.floats() | st.text(max_size=8) | json_values,
        "channels": st.integers() | json_values,
    })
    start = st.fixed_dictionaries({}, optional={
        "streamSid": st.text(max_size=40) | json_values,
        "callSid": st.text(max_size=40) | json_values,
        "accountSid": st.text(max_size=40) | json_values,
        "tracks": st.lists(st.sampled_from(["inbound", "outbound"]) | st.text(max_size=8), max_size=3) | json_values,
        "customParameters": st.fixed_dictionaries({"call_id": call_ids}) | json_values,
        "mediaFormat": fmt | json_values,
    })
    return st.builds(lambda s: _msg("start", "start", s), start | json_values)


def message_strategy(call_ids: st.SearchStrategy[Any] = _call_ids) -> st.SearchStrategy[dict[str, Any]]:
    """One Media Streams message as a JSON object: the six events with valid-looking and hostile fields, and
    unknown events, events of the wrong type and objects with fields of any type."""
    media = st.fixed_dictionaries({"payload": _payloads}, optional={
        "track": st.sampled_from(["inbound", "outbound", "both_tracks", ""]) | json_values,
        "chunk": st.integers().map(str) | json_values, "timestamp": st.integers().map(str) | json_values,
    })
    return st.one_of(
        st.just(_msg("connected", protocol="Call", version="1.0.0")),
        _start_strategy(call_ids),
        st.builds(lambda m: _msg("media", "media", m), media | json_values),
        st.builds(lambda n: _msg("mark", "mark", {"name": n}), st.text(max_size=80) | json_values),
        st.builds(lambda d: _msg("dtmf", "dtmf", {"digit": d}),
                  st.sampled_from(list("0123456789*#ABCD")) | st.text(max_size=5) | json_values),
        st.builds(lambda b: _msg("stop", "stop", b), st.just({"callSid": "CA" + "0" * 32}) | json_values),
        st.builds(lambda e, b: _msg(e, "x", b), st.text(max_size=30) | json_values, json_values),
        st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    )


def _deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"event": "media", "media": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


def frame_strategy(call_ids: st.SearchStrategy[Any] = _call_ids) -> st.SearchStrategy[Frame]:
    """One WebSocket frame: mostly a JSON message, else truncated JSON, deep nesting, a huge frame, any text,
    a binary frame."""
    msg = message_strategy(call_ids)
    as_json = msg.map(lambda m: json.dumps(m, allow_nan=True))
    return st.one_of(
        as_json, as_json, as_json, as_json,
        st.tuples(as_json, st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])]),  # truncated
        st.builds(_deep, st.integers(50, MAX_MESSAGE // 8), st.sampled_from(["list", "dict"])),
        st.builds(lambda n, c: json.dumps(_msg("media", "media", {"payload": c * n})),  # over the limit, or near it
                  st.integers(MAX_MESSAGE - 200, 4 * MAX_MESSAGE) | st.integers(10**5, 10**6), st.sampled_from("A/x")),
        st.text(max_size=200),
        st.binary(max_size=300),
    )


@dataclass(frozen=True)
class Script:
    """What one WebSocket connection sends: its frames in order, then it closes. ``bind``: first place a call
    (a signed webhook to ``Target.bind_number``) and start the stream for it properly, so that the frames reach
    a live call's session rather than the refusal of an unbound connection."""

    frames: tuple[Frame, ...]
    signature: str  # "valid", "none", "wrong"
    bind: bool = False


def script_strategy(call_ids: st.SearchStrategy[Any] = _call_ids) -> st.SearchStrategy[Script]:
    """A connection: often a well-formed opening (connected, start) and then anything, else any frames at all."""
    frames = frame_strategy(call_ids)
    start = _start_strategy(call_ids).map(json.dumps)
    well_opened = st.tuples(st.just(json.dumps(_msg("connected", protocol="Call", version="1.0.0"))), start,
                            st.lists(frames, max_size=12)).map(lambda t: (t[0], t[1], *t[2]))
    anything = st.lists(frames, min_size=1, max_size=12).map(tuple)
    signature = st.sampled_from(["valid"] * 8 + ["none", "wrong"])
    bound = st.builds(Script, st.lists(frames, min_size=1, max_size=16).map(tuple), st.just("valid"), st.just(True))
    return st.builds(Script, well_opened | anything, signature) | bound


@dataclass(frozen=True)
class Webhook:
    """One webhook POST: the path, query, body, content type and signature (with how the body is sent)."""

    path: str
    query: str
    body: bytes
    content_type: str | None
    signature: str  # "valid", "none", "wrong", "stale" (valid for another body)
    chunked: bool  # sent without a Content-Length


_form = st.dictionaries(st.sampled_from(TWILIO_FIELDS) | st.text(max_size=20),
                        st.text(max_size=60) | st.sampled_from(["completed", "ringing", "busy", "failed"])
                        | st.text(min_size=500, max_size=3000), max_size=10)
_bodies = st.one_of(
    _form.map(lambda f: urllib.parse.urlencode(f).encode()),
    _form.map(lambda f: urllib.parse.urlencode(f).encode()),
    st.binary(max_size=400),
    st.sampled_from([b"%zz=%", b"a=%E0%A4%A", b"=&=&&", b"CallSid=%00%FF&To=%F0%9F", b"a" * 70000]),
    st.builds(lambda n, c: c * n, st.integers(MAX_BODY - 64, MAX_BODY + 64) | st.integers(10**5, 6 * 10**5),
              st.sampled_from([b"a", b"&", b"%"])),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
)


def webhook_strategy() -> st.SearchStrategy[Webhook]:
    return st.builds(
        Webhook,
        path=st.sampled_from(["/twilio/voice", "/twilio/voice", "/twilio/status"]),
        query=st.just("") | st.just("") | st.text(max_size=30).map(lambda q: urllib.parse.quote(q, safe="=&")),
        body=_bodies,
        content_type=st.sampled_from(["application/x-www-form-urlencoded"] * 4 + [
            "application/json", "multipart/form-data; boundary=x", "text/plain; charset=latin-1", None]),
        signature=st.sampled_from(["valid"] * 5 + ["none", "wrong", "stale"]),
        chunked=st.booleans(),
    )


def generate(strategy: st.SearchStrategy[Any], n: int, seed_value: int) -> list[Any]:
    """``n`` cases of ``strategy`` from Hypothesis' generate phase (no shrinking, no example database)."""
    out: list[Any] = []

    @seed(seed_value)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case: Any) -> None:
        out.append(case)

    collect()
    return out


# ---------------------------------------------------------------------------- driving them
@dataclass
class Target:
    """A running ingress: where to connect, the public URL signatures are computed over, and the auth token
    (None: ingress accepts unsigned requests, so signatures are not computed)."""

    url: str
    public_base_url: str | None = None
    auth_token: str | None = None
    bind_number: str | None = None  # a number routed to an agent: scripts with ``bind`` place calls to it

    @property
    def public(self) -> str:
        return (self.public_base_url or self.url).rstrip("/")

    def sign(self, url: str, params: dict[str, str], mode: str) -> dict[str, str]:
        if mode == "none":
            return {}
        if mode == "wrong" or not self.auth_token:
            return {"X-Twilio-Signature": base64.b64encode(uuid.uuid4().bytes[:20]).decode()}
        return {"X-Twilio-Signature": RequestValidator(self.auth_token).compute_signature(url, params)}


@dataclass
class FuzzCounts:
    """What a fuzz run sent and what came back."""

    messages: int = 0  # WebSocket frames sent + webhook requests made
    ws_frames: int = 0
    bound_connections: int = 0  # connections started for a call placed first (their frames reach a session)
    bound_frames: int = 0  # frames sent on those after the opening
    ws_frames_unsent: int = 0  # the rest of a script once ingress had closed the connection
    connections: int = 0
    webhooks: int = 0
    http_status: Counter[str] = field(default_factory=Counter)  # webhook responses by status
    ws_close: Counter[str] = field(default_factory=Counter)  # how connections ended: a close code, "refused 403"
    client_errors: Counter[str] = field(default_factory=Counter)  # failures on our side (connect timeouts...)
    seconds: float = 0.0

    def add(self, other: FuzzCounts) -> None:
        for k in ("messages", "ws_frames", "bound_connections", "bound_frames", "ws_frames_unsent", "connections",
                  "webhooks"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.http_status.update(other.http_status)
        self.ws_close.update(other.ws_close)
        self.client_errors.update(other.client_errors)
        self.seconds += other.seconds

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("http_status", "ws_close", "client_errors"):
            d[k] = dict(sorted(getattr(self, k).items()))
        return d


def _ws_url(target: Target) -> tuple[str, str]:
    return (target.url.rstrip("/").replace("http", "ws", 1) + "/twilio/media",
            "wss://" + urllib.parse.urlsplit(target.public).netloc + "/twilio/media")


def opening(call_id: str) -> tuple[str, str]:
    """``connected`` and a well-formed ``start`` for ``call_id``, as Twilio opens a stream."""
    start = {"streamSid": "MZ" + uuid.uuid4().hex, "callSid": "CA" + uuid.uuid4().hex, "accountSid": "AC" + "0" * 32,
             "tracks": ["inbound"], "customParameters": {"call_id": call_id},
             "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    return (json.dumps(_msg("connected", protocol="Call", version="1.0.0")), json.dumps(_msg("start", "start", start)))


async def place_call(target: Target, client: httpx.AsyncClient, number: str) -> str | None:
    """A signed voice webhook to ``number``: the new call's id from the TwiML, or None."""
    params = {"CallSid": "CA" + uuid.uuid4().hex, "AccountSid": "AC" + "0" * 32, "From": "+15550199", "To": number,
              "CallStatus": "ringing", "Direction": "inbound"}
    r = await client.post("/twilio/voice", data=params,
                          headers=target.sign(target.public + "/twilio/voice", params, "valid"))
    m = re.search(r'name="call_id" value="([^"]+)"', r.text) if r.status_code == 200 else None
    return m.group(1) if m else None


async def send_script(target: Target, script: Script, counts: FuzzCounts,
                      client: httpx.AsyncClient | None = None) -> None:
    """One connection: send the script's frames until ingress closes it, then close; count how it ended."""
    url, public_ws = _ws_url(target)
    frames = script.frames
    bound = False
    if script.bind and target.bind_number and client is not None:
        try:
            call_id = await place_call(target, client, target.bind_number)
        except httpx.HTTPError as e:
            counts.client_errors[f"place call: {type(e).__name__}"] += 1
            call_id = None
        if call_id is not None:
            frames, bound = (*opening(call_id), *frames), True
    counts.connections += 1
    counts.bound_connections += bound
    try:
        ws = await websockets.connect(url, additional_headers=target.sign(public_ws, {}, script.signature),
                                      max_size=2**20, open_timeout=20, close_timeout=5)
    except websockets.InvalidStatus as e:
        counts.ws_close[f"refused {e.response.status_code}"] += 1
        return
    except (OSError, TimeoutError, websockets.WebSocketException) as e:
        counts.client_errors[f"connect: {type(e).__name__}"] += 1
        return
    sent = 0
    try:
        for frame in frames:
            await ws.send(frame)
            sent += 1
        # ingress reads what was sent and may close the connection (its verdict on a frame): wait for that a while
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), VERDICT_WAIT_S)
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None:
            counts.ws_close[str(rcvd.code)] += 1
        else:
            await ws.close()
            counts.ws_close["open (closed by us)"] += 1
    except websockets.ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd is not None else None
        counts.ws_close[str(code) if code is not None else "no close frame"] += 1
    except (OSError, TimeoutError) as e:
        counts.client_errors[f"send: {type(e).__name__}"] += 1
    finally:
        counts.ws_frames += sent
        counts.messages += sent
        counts.bound_frames += max(0, sent - 2) if bound else 0
        counts.ws_frames_unsent += len(frames) - sent
        with contextlib.suppress(Exception):
            await ws.close()


async def _chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


async def send_webhook(target: Target, client: httpx.AsyncClient, hook: Webhook, counts: FuzzCounts) -> None:
    path = hook.path + (f"?{hook.query}" if hook.query else "")
    signed_over = hook.body if hook.signature != "stale" else hook.body + b"&x=1"
    params = dict(urllib.parse.parse_qsl(signed_over.decode("utf-8", "replace"), keep_blank_values=True))
    headers = target.sign(target.public + path, params, "valid" if hook.signature == "stale" else hook.signature)
    if hook.content_type:
        headers["Content-Type"] = hook.content_type
    counts.webhooks += 1
    counts.messages += 1
    content: bytes | AsyncIterator[bytes] = _chunks(hook.body) if hook.chunked else hook.body
    try:
        r = await client.post(path, content=content, headers=headers)
        counts.http_status[str(r.status_code)] += 1
    except httpx.HTTPError as e:
        counts.client_errors[f"http: {type(e).__name__}"] += 1


async def drive(target: Target, scripts: list[Script], hooks: list[Webhook], *, concurrency: int = 8) -> FuzzCounts:
    """Send every script (one connection each) and webhook, ``concurrency`` at a time, interleaved."""
    counts = FuzzCounts()
    t0 = time.monotonic()
    work: asyncio.Queue[Script | Webhook] = asyncio.Queue()
    ratio = max(1, len(scripts) // max(1, len(hooks)))
    hi = iter(hooks)
    for i, s in enumerate(scripts):
        work.put_nowait(s)
        if i % ratio == 0:
            h = next(hi, None)
            if h is not None:
                work.put_nowait(h)
    for h in hi:
        work.put_nowait(h)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=target.url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    item = work.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if isinstance(item, Script):
                    await send_script(target, item, counts, client)
                else:
                    await send_webhook(target, client, item, counts)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    counts.seconds = round(time.monotonic() - t0, 2)
    return counts


def plan(messages: int, webhook_share: float = 0.2) -> tuple[int, int]:
    """(scripts, webhooks) expected to make about ``messages`` messages: scripts send ~5 frames each on average,
    though many are cut short when ingress closes the connection; ``run`` tops up until the volume is reached."""
    hooks = int(messages * webhook_share)
    return max(1, (messages - hooks) // 5), hooks


async def run(target: Target, messages: int, *, seed_value: int = 1, concurrency: int = 8, batch: int = 400,
              known_call_ids: tuple[str, ...] = (), log: Callable[[str], None] | None = None) -> FuzzCounts:
    """Generate and send batches until ``messages`` messages went out (about a fifth of them webhooks).
    ``known_call_ids``: calls live on the target; some ``start`` messages name them (a hijack must be refused)."""
    call_ids = st.sampled_from(known_call_ids) | _call_ids if known_call_ids else _call_ids
    total = FuzzCounts()
    round_no = 0
    while total.messages < messages:
        left = messages - total.messages
        n_scripts, n_hooks = plan(min(left, batch * 5))
        scripts = generate(script_strategy(call_ids), n_scripts, seed_value * 1_000_003 + round_no)
        hooks = generate(webhook_strategy(), n_hooks, seed_value * 1_000_033 + round_no) if n_hooks else []
        total.add(await drive(target, scripts, hooks, concurrency=concurrency))
        round_no += 1
        if log is not None:
            log(f"fuzz: {total.messages} messages, {total.connections} connections, {total.seconds:.0f} s")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz_ingress", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="ingress base URL")
    ap.add_argument("--public-base-url", default=None, help="ingress' PUBLIC_BASE_URL (signatures use it)")
    ap.add_argument("--auth-token", default=None, help="TWILIO_AUTH_TOKEN of ingress (unset: unsigned)")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--call-id", action="append", default=[], help="a live call's id (hijack attempts)")
    ap.add_argument("--bind-number", default=None,
                    help="a number routed to an agent: a third of the connections place a call to it first")
    ap.add_argument("--out", type=Path, required=True, help="where the counts are written (JSON)")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(f"[fuzz {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    target = Target(args.url, args.public_base_url, args.auth_token, args.bind_number)
    counts = asyncio.run(run(target, args.messages, seed_value=args.seed, concurrency=args.concurrency,
                             known_call_ids=tuple(args.call_id), log=log))
    args.out.write_text(json.dumps(counts.to_json(), indent=2))


if __name__ == "__main__":
    main()
