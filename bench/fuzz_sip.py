"""Fuzzed SIP at a running ingress's SIP port, while a real SIP call goes on.

    make bench-fuzz-sip                                     # 100,000 SIP messages during a real call
    make bench-fuzz-sip BENCH_ARGS="--messages 5000"

What a broken trunk, a scanner or an attacker sends at a public 5060, made from a seed (``random.Random``: a run is
a fixed sequence of cases) and driven over real sockets (``drive``):

- **garbage**: random bytes, NULs, a STUN binding request, an RTP packet, empty datagrams, CRLF keep-alives;
- **truncated** requests (cut anywhere) and **mutated** ones: a header dropped or repeated hundreds of times, a
  wrong ``Content-Length`` (negative, huge, not a number, off by some), NUL and non-UTF-8 bytes, bare LF or CR line
  ends, folded and colon-less header lines, 10-60 KB header values, a thousand headers, a broken request line
  (unknown method, ``SIP/3.0``, a URI of 10 KB), a bad ``CSeq`` (method mismatch, 2^64), ``Via`` without a branch
  or with a 10 KB host, ``From``/``To`` without tags or with unclosed ``<``, ``Max-Forwards: 0``, compact forms;
- **methods** out of any dialog (BYE, ACK, CANCEL, INFO, REFER, NOTIFY, UPDATE, PRACK, REGISTER, SUBSCRIBE, ...)
  and **responses** to requests never sent;
- **unknown numbers**: valid-looking INVITEs (from many source addresses, the way scanners do) to numbers no agent
  answers; **bad SDP**: INVITEs to a number an agent answers, with SDP that has no audio, only unknown codecs, a
  port 0, garbage addresses or 10 KB of lines; **bad credentials**: Authorization headers of every broken shape;
- **floods**: bursts of a few hundred requests from one source (the per-source rate limit);
- **TCP streams**: pipelined messages, a Content-Length longer than what follows (then the connection closes),
  none at all, a head over the size limit, a message dribbled in pieces, binary noise;
- **dialogs**: a call to the agent's number (``--bind-number``, an agent with no greeting) set up, then hit with
  in-dialog requests with the wrong tags, out-of-order CSeqs, re-INVITEs with broken SDP, INFO with broken DTMF
  bodies, RTP noise at its media port (from the latched address and from others), and ended by BYE — or never
  ACKed, so the platform's own timers must end it.

Sources: every datagram is sent from one of ``--sources`` loopback addresses (127.0.x.y; Linux routes all of
127/8 to lo), so floods look like many hosts and each meets the per-source limit. Counted (``SipFuzzCounts``):
SIP messages sent (RTP packets apart), datagrams the kernel refused, TCP connections and how they ended, the
responses' status codes, dialogs answered, client-side errors.

As a load generator (its own process, off the real caller's event loop):

    python -m bench.fuzz_sip load --host 127.0.0.1 --udp-port 5060 --tcp-port 5060 --messages 100000 \\
        --bind-number +15550190 --out counts.json

``python -m bench.fuzz_sip`` (the bench) starts NATS, the LLM and the data plane with SIP on free ports (as
``make bench-fuzz``), places a real SIP call (tests/e2e/sip_caller.py) that asks the agent questions before and
during the fuzz, samples ingress' RSS, searches every log for errors, and writes bench/results/fuzz-sip-<time>.md.
tests/fuzz/test_sip_fuzz.py runs a few thousand messages in ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS = re.compile(rb"^SIP/2\.0 (\d{3})")
METHODS = ("BYE", "ACK", "CANCEL", "INFO", "REFER", "NOTIFY", "UPDATE", "PRACK", "REGISTER", "SUBSCRIBE",
           "PUBLISH", "MESSAGE", "OPTIONS", "INVITE", "FOO", "invite", "GET", "X" * 300)
MAX_MESSAGE = 16 * 1024  # ingress' MAX_MESSAGE_BYTES: sizes around it probe the limit
TCP_READ_S = 0.3  # after its last message, a TCP connection waits this long for answers (or the server's close)


# ---------------------------------------------------------------------------- messages
@dataclass
class Peer:
    """Where the fuzz sends from and to."""

    host: str
    udp_port: int
    tcp_port: int
    bind_number: str | None = None  # an agent answers it: INVITEs with SDP reach the codec check, dialogs are set up


def _token(r: random.Random, n: int = 10) -> str:
    return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


def unknown_number(r: random.Random) -> str:
    return r.choice([f"+1{r.randrange(2_000_000_000, 9_999_999_999)}", f"{r.randrange(100, 99999)}",
                     f"00{r.randrange(10**9, 10**12)}", "", "*97", "+", "100", "admin", _token(r, 30)])


def sdp_offer(port: int, codecs: str = "0 8 101", extra: str = "") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {codecs}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n{extra}")


def request(peer: Peer, method: str, *, user: str, call_id: str, branch: str, from_tag: str, to_tag: str = "",
            cseq: int = 1, body: str = "", via: tuple[str, int] = ("127.0.0.1", 9), transport: str = "UDP",
            extra: tuple[str, ...] = ()) -> bytes:
    to = f"<sip:{user}@{peer.host}>" + (f";tag={to_tag}" if to_tag else "")
    head = [f"{method} sip:{user}@{peer.host}:{peer.udp_port} SIP/2.0",
            f"Via: SIP/2.0/{transport} {via[0]}:{via[1]};branch=z9hG4bK{branch};rport",
            f"From: <sip:fuzz@{via[0]}>;tag={from_tag}", f"To: {to}", f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}", f"Contact: <sip:fuzz@{via[0]}:{via[1]}>", "Max-Forwards: 70",
            "User-Agent: friendly-scanner", *extra]
    if body:
        head.append("Content-Type: application/sdp")
    head.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def _any_request(r: random.Random, peer: Peer) -> bytes:
    method = r.choice(("INVITE", "OPTIONS", "BYE", "INFO", "REGISTER", "CANCEL", "ACK"))
    number = peer.bind_number if peer.bind_number and r.random() < 0.3 else unknown_number(r)
    body = sdp_offer(r.randrange(1024, 65535)) if method == "INVITE" and r.random() < 0.8 else ""
    return request(peer, method, user=number, call_id=_token(r, 16), branch=_token(r), from_tag=_token(r, 6),
                   cseq=r.randrange(1, 1000), body=body)


def _lines(msg: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = msg.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _m_drop(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    if len(lines) > 1:
        del lines[r.randrange(1, len(lines))]
    return _join(lines, body)


def _m_repeat(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    i = r.randrange(1, len(lines)) if len(lines) > 1 else 0
    lines[i + 1:i + 1] = [lines[i]] * r.choice((1, 2, 50, 400))
    return _join(lines, body)


def _m_length(r: random.Random, m: bytes) -> bytes:
    value = r.choice(["-1", "0", "99999999999999999999", "abc", "1e9", "0x10", " ", "", "16385", "4294967296",
                      str(r.randrange(0, 2000)), "5, 7", "\xff"])
    return re.sub(rb"Content-Length: [^\r]*", b"Content-Length: " + value.encode("utf-8", "replace"), m, count=1)


def _m_bytes(r: random.Random, m: bytes) -> bytes:
    b = bytearray(m)
    for _ in range(r.randrange(1, 8)):
        b.insert(r.randrange(len(b) + 1), r.choice((0, 0xFF, 0xFE, 0xC0, 0x80, 0x1B, 0x7F, r.randrange(256))))
    return bytes(b)


def _m_line_ends(r: random.Random, m: bytes) -> bytes:
    return m.replace(b"\r\n", r.choice((b"\n", b"\r", b"\r\r\n", b"\n\r", b" \r\n ")))


def _m_long_value(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    name = r.choice((b"Via", b"From", b"To", b"Call-ID", b"X-Pad", b"Contact", b"CSeq", b"Authorization"))
    lines.insert(r.randrange(1, len(lines) + 1), name + b": " + b"a" * r.choice((1000, 10_000, 17_000, 60_000)))
    return _join(lines, body)


def _m_many_headers(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    lines[1:1] = [f"X-H{i}: {i}".encode() for i in range(r.choice((100, 1000, 3000)))]
    return _join(lines, body)


def _m_folding(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    i = r.randrange(1, len(lines)) if len(lines) > 1 else 0
    lines[i] = r.choice((b" " + lines[i], lines[i].replace(b":", b""), lines[i] + b"\r\n\tcontinued",
                         b":" + lines[i], lines[i].replace(b": ", b":\t\t\t ")))
    return _join(lines, body)


def _m_request_line(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    lines[0] = r.choice((b"INVITE", b"INVITE sip:x SIP/3.0", b"INVITE  SIP/2.0", b"SIP/2.0 INVITE sip:x",
                         b"INVITE sip:" + b"9" * 10_000 + b"@x SIP/2.0", b"INVITE <sip:x> SIP/2.0",
                         b"INVITE sip:x@[::1 SIP/2.0", b"INVITE tel:+1555 SIP/2.0", b"INVITE http://x/ HTTP/1.1",
                         b"\x00INVITE sip:x SIP/2.0", b"GET / HTTP/1.1", b"PRI * HTTP/2.0"))
    return _join(lines, body)


def _m_header_values(r: random.Random, m: bytes) -> bytes:
    subs = [(rb"CSeq: [^\r]*", [b"CSeq: 1 BYE", b"CSeq: 18446744073709551616 INVITE", b"CSeq: -1 INVITE",
                                b"CSeq: INVITE", b"CSeq: 1", b"CSeq: 1 INVITE INVITE", b"CSeq: \xff\xfe"]),
            (rb"Via: [^\r]*", [b"Via: SIP/2.0/UDP 127.0.0.1:9", b"Via: SIP/2.0/XYZ 127.0.0.1:9;branch=z9hG4bKx",
                               b"Via: SIP/2.0/UDP " + b"h" * 10_000 + b";branch=z9hG4bKx", b"Via: ",
                               b"Via: SIP/2.0/UDP [::1;branch=z9hG4bKx", b"Via: SIP/2.0/UDP 127.0.0.1:99999;rport=-1",
                               b"Via: SIP/2.0/UDP 1.2.3.4:5060;received=999.1.1.1;branch=z9hG4bKx;maddr=10.0.0.1"]),
            (rb"From: [^\r]*", [b"From: <sip:x@y", b"From: sip:x@y", b"From: ", b"From: <>;tag=",
                                b"From: \"" + b"q" * 5000 + b"\" <sip:x@y>;tag=1", b"From: <sip:x@y>;tag=a;tag=b"]),
            (rb"To: [^\r]*", [b"To: <sip:x@y", b"To: ", b"To: <sip:+1555>;tag=nonexistent", b"To: *"]),
            (rb"Max-Forwards: [^\r]*", [b"Max-Forwards: 0", b"Max-Forwards: -1", b"Max-Forwards: 9999999999"]),
            (rb"Call-ID: [^\r]*", [b"Call-ID: ", b"Call-ID: " + b"c" * 9000, b"Call-ID: a b c", b"Call-ID: \x00"])]
    pattern, values = r.choice(subs)
    return re.sub(pattern, r.choice(values).replace(b"\\", b"\\\\"), m, count=1)


def _m_compact(r: random.Random, m: bytes) -> bytes:
    for long, short in ((b"Via:", b"v:"), (b"From:", b"f:"), (b"To:", b"t:"), (b"Call-ID:", b"i:"),
                        (b"Content-Length:", b"l:"), (b"Contact:", b"m:"), (b"Content-Type:", b"c:")):
        if r.random() < 0.5:
            m = m.replace(long, short, 1)
    return m


def _m_auth(r: random.Random, m: bytes) -> bytes:
    lines, body = _lines(m)
    lines.insert(1, r.choice((b"Authorization: Digest", b"Authorization: Digest username=",
                              b"Authorization: Basic eA==",
                              b'Authorization: Digest username="a", realm="r", nonce="' + b"n" * 3000 + b'"',
                              b'Authorization: Digest username="\x00", response="zz", algorithm=SHA-999',
                              b'Proxy-Authorization: Digest nonce="x", nonce="y", uri="sip:x", response="00"',
                              b'Authorization: Digest username="a",,,,,realm=,', b"Authorization: " + b"," * 5000)))
    return _join(lines, body)


MUTATORS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    _m_drop, _m_repeat, _m_length, _m_bytes, _m_line_ends, _m_long_value, _m_many_headers, _m_folding,
    _m_request_line, _m_header_values, _m_compact, _m_auth)


def garbage(r: random.Random) -> bytes:
    kind = r.randrange(7)
    if kind == 0:
        return r.randbytes(r.choice((1, 20, 200, 1400, 9000)))
    if kind == 1:
        return b"\x00" * r.choice((1, 100, 4000))
    if kind == 2:
        return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + r.randbytes(12)  # a STUN binding request
    if kind == 3:
        return struct.pack("!BBHII", 0x80, r.randrange(128), r.randrange(65536), r.getrandbits(32),
                           r.getrandbits(32)) + r.randbytes(160)  # RTP at the SIP port
    if kind == 4:
        return r.choice((b"", b"\r\n", b"\r\n\r\n", b"\n" * 1000))
    if kind == 5:
        return b"SIP/2.0 " + r.choice((b"200 OK", b"100 Trying", b"999 X", b"", b"abc")) + b"\r\n\r\n"
    return ("\ufffd" * r.randrange(1, 300)).encode() + b"\xff\xfe" * r.randrange(1, 100)


def bad_sdp(r: random.Random) -> str:
    return r.choice((
        "v=0\r\n", "", "v=0\r\nm=video 4000 RTP/AVP 96\r\n", sdp_offer(4000, "18 9 96"), sdp_offer(0),
        sdp_offer(70000), sdp_offer(4000).replace("127.0.0.1", "999.999.1.1"),
        sdp_offer(4000).replace("IN IP4 127.0.0.1", "IN IP6 ::zz"), "m=audio x RTP/AVP 0\r\n" * 400,
        sdp_offer(4000, "0 " * 2000), sdp_offer(4000).replace("c=IN", "c=OUT"), "\x00" * 300,
        sdp_offer(4000, extra="a=rtpmap:101 telephone-event/0\r\na=fmtp:101 0-99999999\r\n"),
        sdp_offer(4000) * 30,
    ))


@dataclass
class Case:
    """One fuzz case: datagrams from one source (``udp``), one TCP stream (``tcp``), a burst from one source
    (``flood``) or a dialog on the bound number (``dialog``)."""

    kind: str
    transport: str  # "udp" | "tcp" | "dialog"
    payloads: list[bytes] = field(default_factory=list)
    source: int = 0
    slow: bool = False  # tcp: the stream is dribbled in small pieces

    @property
    def messages(self) -> int:
        return max(1, len(self.payloads)) if self.transport != "dialog" else 8


def make_case(r: random.Random, peer: Peer, sources: int) -> Case:
    """One case, drawn by weight (dialogs only with a bound number)."""
    roll = r.random()
    src = r.randrange(sources)
    if roll < 0.12:
        return Case("garbage", "udp", [garbage(r) for _ in range(r.randrange(1, 4))], src)
    if roll < 0.24:
        m = _any_request(r, peer)
        return Case("truncated", "udp", [m[: r.randrange(0, len(m))]], src)
    if roll < 0.56:
        m = _any_request(r, peer)
        for mutate in r.sample(MUTATORS, r.choice((1, 1, 2, 3))):
            m = mutate(r, m)
        return Case("mutated", "udp", [m], src)
    if roll < 0.63:
        method = r.choice(METHODS)
        return Case("methods", "udp", [request(peer, method, user=unknown_number(r), call_id=_token(r, 16),
                                               branch=_token(r), from_tag=_token(r, 6), to_tag=_token(r, 6))], src)
    if roll < 0.73:
        return Case("unknown_number", "udp", [request(peer, "INVITE", user=unknown_number(r), call_id=_token(r, 16),
                                                      branch=_token(r), from_tag=_token(r, 6),
                                                      body=sdp_offer(r.randrange(1024, 65535)))], src)
    if roll < 0.79:
        user = peer.bind_number or unknown_number(r)
        return Case("bad_sdp", "udp", [request(peer, "INVITE", user=user, call_id=_token(r, 16), branch=_token(r),
                                               from_tag=_token(r, 6), body=bad_sdp(r))], src)
    if roll < 0.82:
        probe = request(peer, "OPTIONS", user="100", call_id=_token(r, 16), branch="fl", from_tag="fl")
        return Case("flood", "udp", [probe.replace(b"branch=z9hG4bKfl", f"branch=z9hG4bK{i}".encode())
                                     for i in range(r.choice((50, 200, 400)))], src)
    if roll < 0.97 or not peer.bind_number:
        return tcp_case(r, peer, src)
    return Case("dialog", "dialog", source=src)


def tcp_case(r: random.Random, peer: Peer, src: int) -> Case:
    msgs = [_any_request(r, peer).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") for _ in range(r.randrange(1, 4))]
    kind = r.randrange(6)
    if kind == 0:  # a Content-Length longer than what follows; the connection then closes
        m = msgs[0]
        msgs = [re.sub(rb"Content-Length: \d+", b"Content-Length: 5000", m, count=1)]
    elif kind == 1:  # none at all (required on a stream)
        msgs = [re.sub(rb"Content-Length: \d+\r\n", b"", m, count=1) for m in msgs]
    elif kind == 2:  # a head over the limit, never ending
        msgs = [b"INVITE sip:x SIP/2.0\r\nX-Pad: " + b"p" * (MAX_MESSAGE + r.randrange(1, 50_000))]
    elif kind == 3:  # noise
        msgs = [garbage(r) for _ in range(r.randrange(1, 4))]
    elif kind == 4:  # mutated, pipelined
        msgs = [r.choice(MUTATORS)(r, m) for m in msgs]
    return Case("tcp", "tcp", msgs, src, slow=kind == 5)


# ---------------------------------------------------------------------------- counting
@dataclass
class SipFuzzCounts:
    messages: int = 0  # SIP messages sent (datagrams and stream messages; RTP apart)
    datagrams: int = 0
    datagrams_refused: int = 0  # the local kernel refused a send (buffer full): the flood outran the receiver
    tcp_connections: int = 0
    tcp_refused: int = 0  # connect refused or timed out (the listener's connection limit, or load)
    rtp_packets: int = 0
    dialogs_answered: int = 0
    dialogs_unanswered: int = 0
    cases: Counter[str] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)  # status codes of every response received
    tcp_endings: Counter[str] = field(default_factory=Counter)  # "closed by ingress" / "open" / errors
    client_errors: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}


def _count_responses(counts: SipFuzzCounts, data: bytes) -> None:
    """The status code of a response; a 500 with Retry-After is RFC 3261's answer to an in-dialog request whose CSeq
    went backwards (12.2.2), counted apart from any other 500."""
    m = STATUS.match(data)
    if m:
        code = m.group(1).decode()
        if code == "500" and b"\r\nRetry-After:" in data:
            code = "500 cseq-out-of-order"
        counts.responses[code] += 1


# ---------------------------------------------------------------------------- driving
def source_address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


class _UdpSource:
    """A UDP socket on one loopback source address; counts what comes back."""

    def __init__(self, address: str, counts: SipFuzzCounts) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.setblocking(False)
        self.counts = counts
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.sock, 65536)
            except OSError:
                await asyncio.sleep(0.01)  # an ICMP error came back for an earlier send
                continue
            _count_responses(self.counts, data)

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.counts.messages += 1
        self.counts.datagrams += 1
        try:
            self.sock.sendto(data, to)
        except (BlockingIOError, InterruptedError):
            self.counts.datagrams_refused += 1
        except OSError as e:  # over 65,507 bytes, or the port unreachable (ICMP of an earlier send)
            self.counts.client_errors[type(e).__name__ + ":" + str(e.errno)] += 1

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        self.sock.close()


class Pace:
    """At most ``rate`` messages a second over all workers (0: as fast as they go)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    async def take(self, n: int) -> None:
        self.sent += n
        if self.rate > 0:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def _tcp(peer: Peer, case: Case, source: str, counts: SipFuzzCounts) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(peer.host, peer.tcp_port, local_addr=(source, 0)), 3)
    except (OSError, TimeoutError):
        counts.tcp_refused += 1
        return
    counts.tcp_connections += 1
    try:
        for m in case.payloads:
            counts.messages += 1
            if case.slow:
                for i in range(0, len(m), 7):
                    writer.write(m[i:i + 7])
                    await writer.drain()
                    await asyncio.sleep(0.002)
            else:
                writer.write(m)
                await writer.drain()
        end = time.monotonic() + TCP_READ_S
        ending = "open"
        while (left := end - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not data:
                ending = "closed by ingress"
                break
            for part in re.split(rb"(?=SIP/2\.0 \d{3} )", data):
                _count_responses(counts, part)
        counts.tcp_endings[ending] += 1
    except (ConnectionError, OSError) as e:
        counts.tcp_endings[type(e).__name__] += 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)


async def _dialog(peer: Peer, r: random.Random, source: str, counts: SipFuzzCounts) -> None:
    """A call set up on the bound number, hit with in-dialog junk and RTP noise, then ended (or never ACKed)."""
    assert peer.bind_number is not None
    loop = asyncio.get_running_loop()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (sip, media, stranger):
            s.bind((source, 0))
            s.setblocking(False)
        via = sip.getsockname()
        call_id, tag = _token(r, 16), _token(r, 6)
        to = (peer.host, peer.udp_port)

        def send(data: bytes) -> None:
            counts.messages += 1
            with contextlib.suppress(OSError):
                sip.sendto(data, to)

        async def final(deadline: float) -> bytes | None:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sip, 65536), left)
                except TimeoutError:
                    return None
                except OSError:
                    continue
                _count_responses(counts, data)
                m = STATUS.match(data)
                if m and int(m.group(1)) >= 200 and b" INVITE\r\n" in data:
                    return data
            return None

        def req(method: str, cseq: int, **kw: Any) -> bytes:
            return request(peer, method, user=peer.bind_number or "", call_id=call_id, branch=_token(r),
                           from_tag=tag, cseq=cseq, via=via, **kw)

        send(req("INVITE", 1, body=sdp_offer(media.getsockname()[1])))
        answer = await final(time.monotonic() + 8)
        if answer is None or not answer.startswith(b"SIP/2.0 200"):
            counts.dialogs_unanswered += 1
            return
        counts.dialogs_answered += 1
        to_tag_m = re.search(rb"\r\nTo:[^\r]*;tag=([^;\r>]+)", answer)
        to_tag = to_tag_m.group(1).decode() if to_tag_m else ""
        port_m = re.search(rb"\r\nm=audio (\d+)", answer)
        rtp_to = (peer.host, int(port_m.group(1))) if port_m else None
        acked = r.random() < 0.8
        if acked:
            send(req("ACK", 1, to_tag=to_tag))
        junk = [
            req("BYE", 2, to_tag="wrong-tag"), req("BYE", 0, to_tag=to_tag),  # wrong tag; a CSeq going backwards
            req("INVITE", 3, to_tag=to_tag, body=bad_sdp(r)), req("INFO", 4, to_tag=to_tag,
                                                                   extra=("Content-Type: application/dtmf-relay",))
            + r.choice((b"Signal=Z\r\nDuration=-5\r\n", b"Signal=\r\n", b"\x00" * 50, b"Signal=" + b"1" * 3000)),
            req("UPDATE", 5, to_tag=to_tag, body=sdp_offer(0)), req("CANCEL", 1, to_tag=to_tag),
            req("REFER", 6, to_tag=to_tag, extra=("Refer-To: <sip:+19005550100@evil.example>",)),
            r.choice(MUTATORS)(r, req("INFO", 7, to_tag=to_tag)),
        ]
        for j in r.sample(junk, r.randrange(2, len(junk) + 1)):
            send(j)
        if rtp_to is not None:
            for i in range(r.choice((10, 50, 150))):
                pt = r.choice((0, 8, 101, 13, 127, 200))
                packet = struct.pack("!BBHII", r.choice((0x80, 0x90, 0xA0, 0x40, 0xFF)), pt, i, i * 160,
                                     r.getrandbits(32)) + r.randbytes(r.choice((0, 4, 160, 1400, 3000)))
                with contextlib.suppress(OSError):
                    (media if i % 3 else stranger).sendto(packet, rtp_to)
                counts.rtp_packets += 1
                if i % 25 == 0:
                    await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError, OSError):
            while True:  # what came back (481s, 400s, 488s, the 200 retransmitted while unACKed)
                data = await asyncio.wait_for(loop.sock_recv(sip, 65536), 0.2)
                _count_responses(counts, data)
        if acked:
            send(req("BYE", 9, to_tag=to_tag))
            with contextlib.suppress(TimeoutError, OSError):
                _count_responses(counts, await asyncio.wait_for(loop.sock_recv(sip, 65536), 2))
    finally:
        for s in (sip, media, stranger):
            s.close()


async def drive(peer: Peer, messages: int, *, seed_value: int = 1, sources: int = 64, concurrency: int = 16,
                rate: float = 2000.0, max_dialogs: int = 4) -> SipFuzzCounts:
    """Send about ``messages`` SIP messages (cases drawn from ``seed_value``) at ``peer``, at most ``rate`` a
    second, ``concurrency`` cases at a time (``max_dialogs`` of them dialogs)."""
    counts = SipFuzzCounts()
    r = random.Random(seed_value)
    udp = [_UdpSource(source_address(i), counts) for i in range(sources)]
    for u in udp:
        u.reader = asyncio.create_task(u.read())
    pace = Pace(rate)
    dialogs = asyncio.Semaphore(max_dialogs)
    queue: asyncio.Queue[Case | None] = asyncio.Queue(maxsize=concurrency * 4)
    to = (peer.host, peer.udp_port)

    async def produce() -> None:
        planned = 0
        while planned < messages:
            case = make_case(r, peer, sources)
            planned += case.messages
            await queue.put(case)
        for _ in range(concurrency):
            await queue.put(None)

    async def worker(w: int) -> None:
        wr = random.Random(seed_value * 1000 + w)  # dialogs draw from their own stream: the cases stay fixed
        while (case := await queue.get()) is not None:
            counts.cases[case.kind] += 1
            await pace.take(case.messages)
            try:
                if case.transport == "udp":
                    for i, p in enumerate(case.payloads):
                        udp[case.source].send(p, to)
                        if i % 50 == 49:
                            await asyncio.sleep(0)
                elif case.transport == "tcp":
                    await _tcp(peer, case, source_address(case.source), counts)
                else:
                    async with dialogs:
                        await _dialog(peer, wr, source_address(sources + w), counts)
            except Exception as e:  # a client-side failure is counted, never stops the run
                counts.client_errors[type(e).__name__] += 1

    try:
        await asyncio.gather(produce(), *(worker(w) for w in range(concurrency)))
        await asyncio.sleep(0.5)  # the last answers
    finally:
        for u in udp:
            await u.close()
    return counts


# ---------------------------------------------------------------------------- the bench
def load_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz_sip load")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--udp-port", type=int, required=True)
    ap.add_argument("--tcp-port", type=int, required=True)
    ap.add_argument("--bind-number", default=None)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sources", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=float, default=2000.0, help="messages per second at most (0: unpaced)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    counts = asyncio.run(drive(Peer(a.host, a.udp_port, a.tcp_port, a.bind_number), a.messages,
                               seed_value=a.seed, sources=a.sources, concurrency=a.concurrency, rate=a.rate))
    out = {**counts.to_json(), "wall_s": round(time.monotonic() - t0, 1)}
    text = json.dumps(out, indent=2)
    if a.out:
        a.out.write_text(text)
    print(text)


def main() -> None:
    if sys.argv[1:2] == ["load"]:
        load_main(sys.argv[2:])
        return
    from .fuzz_sip_bench import main as bench_main

    bench_main(sys.argv[1:])


if __name__ == "__main__":
    main()
