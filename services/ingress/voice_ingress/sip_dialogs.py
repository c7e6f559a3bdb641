"""SIP user agent server (RFC 3261): transactions, dialogs and their timers, with no sockets and no clock of its own.

``UserAgentServer.receive`` takes one parsed-or-not message from a peer; what it sends goes through ``Wire.send``
(bytes to a peer), when goes through a ``Scheduler`` (the event loop, or a fake clock in tests), and what a call
means is the ``Application``'s (route the number, negotiate SDP, run the media): the core tells it of a new INVITE,
a CANCEL, a BYE, a re-offer, a lost ACK, and the application answers through ``ring`` / ``answer`` / ``reject`` /
``hangup``.

What it keeps per RFC 3261:

- Server transactions by Via branch (``_tx``): a retransmitted request gets the same response again, not a new
  one; a CANCEL finds its INVITE by branch (200 to the CANCEL, then 487 to the INVITE); an ACK to a non-2xx final
  response is absorbed by its transaction. Non-2xx finals to an INVITE are retransmitted over UDP (T1 doubling to
  T2) until their ACK, for at most 64·T1.
- Dialogs by Call-ID and our tag: the 2xx to an INVITE (initial or re-INVITE) is retransmitted from T1 doubling to
  T2 until its ACK arrives (over TCP too the ACK is awaited, without retransmissions); with no ACK after 64·T1 the
  call is ended with a BYE. BYE → 200 (481 for an unknown dialog); re-INVITE and UPDATE → the application's SDP
  answer (hold answered with the mirrored direction), a session-timer refresh answered with its interval
  (RFC 4028, ``refresher=uac``); INFO with ``application/dtmf-relay`` → a digit.
- Our BYE is a client transaction: retransmitted over UDP (T1 doubling to T2) until a final response, 64·T1 at most.
- OPTIONS → 200; unknown methods → 405 with Allow; missing or malformed mandatory headers → 400; an unsupported
  ``Require`` → 420; a request for a dialog we do not know → 481.
- Sources: out-of-dialog requests from a source ``admit`` refuses (the trunks and the allow-list; else outside
  ``allowed``) get 403 and no dialog, and every source address is rate-limited (a token bucket, the table of
  sources bounded): scanners probe every public 5060.
- Requests of ours (``client_request``; the UAC's INVITE in ``sip_uac.py``, REFER by ``in_dialog_request``): their
  responses found by Via branch, retransmitted over UDP until a final response. A dialog we started
  (``local_party``/``remote_party`` set) takes in-dialog requests like any other; NOTIFY → 200 and the application.

Every table is bounded (``MAX_DIALOGS``, ``MAX_TRANSACTIONS``, ``MAX_SOURCES``), and responses echo only what the
request carried. Logs never name numbers or addresses of callers.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sipmessage import URI, CSeq, Message, Request, Response, Via
from voice_runtime import metrics
from voice_runtime.logging import get_logger, safe_error

from .sdp import NoCommonCodec

log = get_logger(__name__)
SVC = "ingress"

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY"
SUPPORTED = "timer"
MAX_MESSAGE_BYTES = 16 * 1024
MAX_DIALOGS = 4096
MAX_TRANSACTIONS = 8192
MAX_SOURCES = 4096
MIN_SESSION_EXPIRES = 90
MAGIC = "z9hG4bK"
MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 415: "Unsupported Media Type", 420: "Bad Extension",
           422: "Session Interval Too Small", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
           488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
           503: "Service Unavailable"}
Transport = Literal["UDP", "TCP"]


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from, and so where its responses go (symmetric response routing, RFC 3581)."""

    transport: Transport
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class Wire(Protocol):
    def send(self, data: bytes, peer: Peer) -> None:
        """Send one message (never blocks; a peer that is gone is the wire's to ignore)."""


class Application(Protocol):
    """What a call means: the SIP endpoint implements it."""

    def invite(self, dialog: Dialog, request: Request) -> None:
        """A new INVITE (100 Trying has been sent): ``ring``/``answer``/``reject`` it, soon."""

    def cancelled(self, dialog: Dialog) -> None:
        """The caller gave up before the answer (CANCEL; 487 sent)."""

    def reoffer(self, dialog: Dialog, body: bytes) -> str:
        """A new offer in the dialog (re-INVITE, UPDATE): the SDP answer; ``ValueError`` subclasses refuse it
        (``NoCommonCodec`` → 488, anything else → 400)."""

    def current_answer(self, dialog: Dialog) -> str:
        """The SDP we last answered (a refresh without an offer gets it again)."""

    def bye(self, dialog: Dialog) -> None:
        """The caller hung up (BYE; 200 sent)."""

    def ack_lost(self, dialog: Dialog) -> None:
        """No ACK came for our 2xx within 64·T1: the call is over (BYE sent)."""

    def dtmf(self, dialog: Dialog, digit: str) -> None:
        """A digit sent as SIP INFO."""

    def acked(self, dialog: Dialog, body: bytes) -> None:
        """The ACK of our 2xx carried a body: the SDP answer to the offer we made in it (a delayed offer)."""

    def notify(self, dialog: Dialog, request: Request) -> None:
        """A NOTIFY in the dialog (200 sent): the progress of a REFER we sent (``message/sipfrag``)."""


@dataclass
class Dialog:
    """One call's dialog, from its INVITE on (``early``) to its end (``terminated``)."""

    call_id: str
    local_tag: str
    remote_tag: str
    peer: Peer
    invite: Request
    remote_target: str
    route_set: list[str]
    remote_cseq: int
    state: Literal["early", "confirmed", "terminated"] = "early"
    local_cseq: int = 0
    local_party: str | None = None  # our From/To header with our tag (a dialog we started); else the INVITE's To
    remote_party: str | None = None  # theirs with their tag (a dialog we started); else the INVITE's From
    answered: bool = False
    session_expires: int | None = None
    app: Any = None  # the application's call
    _pending_ack: tuple[int, _Retransmit] | None = None  # (CSeq of the INVITE, its 2xx being retransmitted)
    _bye: _Retransmit | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)


@dataclass
class _Retransmit:
    """A message sent again at T1, 2·T1, ... (capped at T2, or T1 doubling without cap) until stopped or 64·T1."""

    handle: Cancellable | None = None
    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


@dataclass
class _ServerTx:
    method: str
    dialog: Dialog | None
    response: bytes | None = None  # the last response sent (a retransmitted request gets it again)
    final: int | None = None
    retransmit: _Retransmit | None = None
    expires_at: float = 0.0


@dataclass
class _Bucket:
    tokens: float
    at: float


class Bounded(OrderedDict[Any, Any]):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class UasSettings:
    t1_s: float = 0.5
    t2_s: float = 4.0
    local_host: str = "127.0.0.1"  # in Contact and Via of what we send
    local_port: int = 5060
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)  # empty: any
    admit: Callable[[str], bool] | None = None  # decides instead of ``allowed`` (the trunks and the allow-list)
    rate_per_s: float = 20.0  # out-of-dialog requests per source address
    rate_burst: float = 40.0
    user_agent: str = "voice-platform"


def new_tag() -> str:
    return secrets.token_hex(8)


class UserAgentServer:
    def __init__(self, app: Application, wire: Wire, scheduler: Scheduler, settings: UasSettings) -> None:
        self.app, self.wire, self.clock, self.settings = app, wire, scheduler, settings
        self.dialogs: Bounded = Bounded(MAX_DIALOGS)  # (Call-ID, our tag) -> Dialog
        self._tx: Bounded = Bounded(MAX_TRANSACTIONS)  # (branch, method) -> _ServerTx
        self._client_tx: dict[str, Dialog] = {}  # branch of our BYE -> its dialog
        self._clients: Bounded = Bounded(MAX_TRANSACTIONS)  # branch of another request of ours -> its handler
        self._sources: Bounded = Bounded(MAX_SOURCES)  # source address -> token bucket
        self.refused = 0  # requests dropped by the rate limit or refused by the allow-list

    # ------------------------------------------------------------ input
    def receive(self, data: bytes, peer: Peer) -> None:
        """One message from ``peer`` (a datagram, or one framed off a TCP stream)."""
        if not data.strip(b"\r\n"):
            return  # a keep-alive (RFC 5626 CRLF)
        if len(data) > MAX_MESSAGE_BYTES:
            metrics.ERRORS.labels(SVC, "sip_too_large").inc()
            return
        try:
            msg = Message.parse(data)
        except (ValueError, IndexError, UnicodeDecodeError):
            metrics.ERRORS.labels(SVC, "sip_malformed").inc()
            self._bad_request(data, peer)
            return
        try:
            if isinstance(msg, Response):
                self._on_response(msg)
            else:
                self._on_request(msg, peer)
        except (ValueError, KeyError, IndexError) as e:
            metrics.ERRORS.labels(SVC, "sip_malformed").inc()
            log.info("sip_bad_message", error=safe_error(e, 120))
            if isinstance(msg, Request) and msg.method != "ACK":
                self._bad_request(data, peer)

    def _bad_request(self, data: bytes, peer: Peer) -> None:
        """400 where the request can be answered at all (it names its Via, Call-ID, CSeq, From, To)."""
        if not self._admitted(peer, None):
            return
        try:
            head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            lines = head.split("\r\n")
            if not lines[0].endswith("SIP/2.0") or lines[0].startswith("ACK "):
                return
            headers: dict[str, list[str]] = {}
            compact = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    continue
                key = compact.get(name.strip().lower(), name.strip().lower())
                headers.setdefault(key, []).append(value.strip())
            if not headers.get("via"):
                return
            resp = Response(400, "Bad Request")
            for key, name in (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"),
                              ("cseq", "CSeq")):
                for v in headers.get(key, []):
                    resp.headers.add(name, v)
            resp.headers.set("Content-Length", "0")
            self.wire.send(bytes(resp), peer)
        except Exception:  # nothing about a malformed message may stop the server
            return

    def _admitted(self, peer: Peer, method: str | None) -> bool:
        """The source is allowed (else 403, said by the caller) and within its rate (else dropped silently)."""
        now = self.clock.time()
        b = self._sources.get(peer.host)
        if b is None:
            b = _Bucket(self.settings.rate_burst, now)
        b.tokens = min(self.settings.rate_burst, b.tokens + (now - b.at) * self.settings.rate_per_s)
        b.at = now
        self._sources[peer.host] = b
        if b.tokens < 1:
            self.refused += 1
            metrics.ERRORS.labels(SVC, "sip_rate_limited").inc()
            return False
        b.tokens -= 1
        return True

    def allowed(self, peer: Peer) -> bool:
        if self.settings.admit is not None:
            return self.settings.admit(peer.host)
        if not self.settings.allowed:
            return True
        try:
            address = ipaddress.ip_address(peer.host)
        except ValueError:
            return False
        return any(address in net for net in self.settings.allowed)

    # ------------------------------------------------------------ requests
    def _on_request(self, req: Request, peer: Peer) -> None:
        for name in MANDATORY:
            if req.headers.get(name) is None:
                raise ValueError(f"missing {name}")
        stamp_via(req, peer)
        cseq = req.cseq
        vias = req.via
        if not vias or cseq.method != req.method:
            raise ValueError("CSeq method does not match")
        req.from_address  # noqa: B018  (parsed: a malformed From is a 400)
        to = req.to_address
        key = self._tx_key(req, vias[0])
        method = req.method

        # a retransmission of a request we have answered, a CANCEL, or the ACK of a non-2xx final
        if method == "ACK":
            self._on_ack(req, key, to.parameters.get("tag"))
            return
        if method == "CANCEL":
            self._on_cancel(req, peer, key)
            return
        tx = self._tx.get((key, method))
        if tx is not None:
            if tx.response is not None:
                self.wire.send(tx.response, peer)
            return

        to_tag = to.parameters.get("tag")
        if to_tag:
            self._in_dialog(req, peer, key, str(to_tag))
            return
        if not self._admitted(peer, method):
            return
        if not self.allowed(peer):
            self.refused += 1
            metrics.ERRORS.labels(SVC, "sip_forbidden").inc()
            self._reply(req, peer, 403, key=key)
            return
        if method == "INVITE":
            self._new_invite(req, peer, key)
        elif method == "OPTIONS":
            self._reply(req, peer, 200, key=key, headers=_capabilities())
        elif method == "BYE":
            self._reply(req, peer, 481, key=key)
        elif method in ("UPDATE", "INFO"):
            self._reply(req, peer, 481, key=key)
        else:
            self._reply(req, peer, 405, key=key, headers=[("Allow", ALLOW)])

    def _tx_key(self, req: Request, top: Via) -> str:
        branch = top.parameters.get("branch") or ""
        if branch.startswith(MAGIC):
            return f"{branch}|{top.host}:{top.port or ''}"
        # RFC 2543 peers: the request's identity stands for the branch
        return f"{req.call_id}|{req.cseq.sequence}|{req.from_address.parameters.get('tag')}|{top}"

    def _new_invite(self, req: Request, peer: Peer, key: str) -> None:
        unsupported = [o for o in req.require if o.lower() not in ("timer",)]
        if unsupported:
            self._reply(req, peer, 420, key=key, headers=[("Unsupported", ", ".join(unsupported)[:200])])
            return
        ct = req.headers.get("Content-Type")
        if req.body.strip() and (ct is None or ct.split(";")[0].strip().lower() != "application/sdp"):
            self._reply(req, peer, 415, key=key, headers=[("Accept", "application/sdp")])
            return
        se = _session_expires(req)
        if se is not None and se < MIN_SESSION_EXPIRES:
            self._reply(req, peer, 422, key=key, headers=[("Min-SE", str(MIN_SESSION_EXPIRES))])
            return
        contact = req.contact
        from_tag = req.from_address.parameters.get("tag") or ""
        d = Dialog(call_id=req.call_id, local_tag=new_tag(), remote_tag=str(from_tag), peer=peer, invite=req,
                   remote_target=str(contact[0].uri) if contact else str(req.from_address.uri),
                   route_set=[str(a) for a in req.record_route], remote_cseq=req.cseq.sequence,
                   session_expires=se)
        self.dialogs[d.key] = d
        tx = _ServerTx("INVITE", d, expires_at=self.clock.time() + 64 * self.settings.t1_s)
        self._remember()
        self._tx[(key, "INVITE")] = tx
        d.app = None
        self._send_response(tx, self._response(req, 100), peer)
        try:
            self.app.invite(d, req)
        except Exception as e:
            metrics.ERRORS.labels(SVC, "sip_invite").inc()
            log.error("sip_invite_failed", error=safe_error(e, 200))
            self.reject(d, 500)

    def _in_dialog(self, req: Request, peer: Peer, key: str, to_tag: str) -> None:
        d = self.dialogs.get((req.call_id, to_tag))
        method = req.method
        if d is None or d.state == "terminated":
            if self._admitted(peer, method):
                self._reply(req, peer, 481, key=key)
            return
        seq = req.cseq.sequence
        if seq <= d.remote_cseq and method != "ACK":
            self._reply(req, peer, 500, key=key, headers=[("Retry-After", "1")])  # out of order
            return
        d.remote_cseq = seq
        if method == "BYE":
            self._reply(req, peer, 200, key=key, dialog=d)
            self._terminate(d)
            self.app.bye(d)
        elif method in ("INVITE", "UPDATE"):
            self._reoffer(req, peer, key, d)
        elif method == "OPTIONS":
            self._reply(req, peer, 200, key=key, dialog=d, headers=_capabilities())
        elif method == "INFO":
            digit = _info_digit(req)
            self._reply(req, peer, 200, key=key, dialog=d)
            if digit is not None:
                self.app.dtmf(d, digit)
        elif method == "NOTIFY":
            self._reply(req, peer, 200, key=key, dialog=d)
            self.app.notify(d, req)
        else:
            self._reply(req, peer, 405, key=key, dialog=d, headers=[("Allow", ALLOW)])

    def _reoffer(self, req: Request, peer: Peer, key: str, d: Dialog) -> None:
        invite = req.method == "INVITE"
        if invite and d._pending_ack is not None:
            self._reply(req, peer, 491, key=key, dialog=d)  # our 2xx to the previous INVITE awaits its ACK
            return
        se = _session_expires(req)
        if se is not None and se < MIN_SESSION_EXPIRES:
            self._reply(req, peer, 422, key=key, dialog=d, headers=[("Min-SE", str(MIN_SESSION_EXPIRES))])
            return
        try:
            answer = self.app.reoffer(d, req.body) if req.body.strip() else self.app.current_answer(d)
        except ValueError as e:
            code = 488 if isinstance(e, NoCommonCodec) else 400
            self._reply(req, peer, code, key=key, dialog=d)
            return
        if se is not None:
            d.session_expires = se
        contact = req.contact
        if contact:
            d.remote_target = str(contact[0].uri)
        d.peer = peer
        headers = _timer_headers(req, se)
        if req.method == "UPDATE" and not req.body.strip():
            self._reply(req, peer, 200, key=key, dialog=d, headers=headers)
            return
        resp = self._response(req, 200, dialog=d, headers=headers, body=answer.encode())
        tx = _ServerTx(req.method, d, expires_at=self.clock.time() + 64 * self.settings.t1_s)
        self._tx[(key, req.method)] = tx
        self._send_response(tx, resp, peer)
        if invite:
            self._await_ack(d, req.cseq.sequence, bytes(resp))

    def _on_ack(self, req: Request, key: str, to_tag: Any) -> None:
        tx = self._tx.get((key, "INVITE"))
        if tx is not None and tx.final is not None and tx.final >= 300:
            if tx.retransmit is not None:
                tx.retransmit.stop()  # the ACK of our non-2xx final: the transaction is over
            return
        d = self.dialogs.get((req.call_id, str(to_tag))) if to_tag else None
        if d is None or d._pending_ack is None:
            return
        seq, retransmit = d._pending_ack
        if req.cseq.sequence == seq:
            retransmit.stop()
            d._pending_ack = None
            if d.state == "early":
                d.state = "confirmed"
            if req.body.strip():
                self.app.acked(d, req.body)

    def _on_cancel(self, req: Request, peer: Peer, key: str) -> None:
        tx = self._tx.get((key, "INVITE"))
        if tx is None or tx.dialog is None:
            self._reply(req, peer, 481)
            return
        self._reply(req, peer, 200)
        d = tx.dialog
        if tx.final is None and d.state == "early":
            self.reject(d, 487)
            self.app.cancelled(d)

    # ------------------------------------------------------------ responses
    def _on_response(self, resp: Response) -> None:
        vias = resp.via
        if not vias:
            return
        branch = vias[0].parameters.get("branch") or ""
        handler = self._clients.get(str(branch))
        if handler is not None:
            handler(resp)
            return
        d = self._client_tx.get(str(branch))
        if d is None or resp.code < 200:
            return
        del self._client_tx[str(branch)]
        if d._bye is not None:
            d._bye.stop()
            d._bye = None
        self.dialogs.pop(d.key, None)

    # ------------------------------------------------------------ what the application does
    def ring(self, d: Dialog) -> None:
        tx = self._invite_tx(d)
        if tx is not None and tx.final is None:
            self._send_response(tx, self._response(d.invite, 180, dialog=d), d.peer)

    def answer(self, d: Dialog, sdp: str) -> bool:
        """Send the 2xx with our SDP, retransmitted until the ACK. False when the call ended meanwhile."""
        tx = self._invite_tx(d)
        if tx is None or tx.final is not None or d.state != "early":
            return False
        headers = _timer_headers(d.invite, d.session_expires)
        resp = self._response(d.invite, 200, dialog=d, body=sdp.encode(), headers=headers)
        self._send_response(tx, resp, d.peer)
        d.answered = True
        self._await_ack(d, d.invite.cseq.sequence, bytes(resp))
        return True

    def reject(self, d: Dialog, code: int, headers: list[tuple[str, str]] | None = None) -> None:
        """A final non-2xx answer to the INVITE, retransmitted over UDP until its ACK; the dialog ends."""
        tx = self._invite_tx(d)
        if tx is not None and tx.final is None:
            resp = self._response(d.invite, code, dialog=d, headers=headers or [])
            self._send_response(tx, resp, d.peer)
            if not d.peer.reliable:
                data = bytes(resp)
                tx.retransmit = self._retransmit(lambda: self.wire.send(data, d.peer), cap=True, on_timeout=None)
        self._terminate(d)

    def hangup(self, d: Dialog) -> None:
        """End the call from our side: BYE once answered, or a final refusal before the answer."""
        if d.state == "terminated":
            return
        if not d.answered:
            self.reject(d, 480)
            return
        if d._pending_ack is not None:
            d._pending_ack[1].stop()
            d._pending_ack = None
        self._send_bye(d)

    # ------------------------------------------------------------ requests of ours (a UAC, REFER)
    def client_request(self, data: bytes, peer: Peer, branch: str, on_response: Callable[[Response], None], *,
                       invite: bool, on_timeout: Callable[[], None] | None) -> _Retransmit:
        """Send one request of ours: its responses (by Via branch) go to ``on_response`` until ``forget``. Over
        UDP it is sent again at T1, 2·T1 ... (an INVITE without cap, until the caller stops it on a provisional
        response; others capped at T2), until stopped; ``on_timeout`` after 64·T1 unless stopped first."""
        self._clients[branch] = on_response
        self.wire.send(data, peer)
        send = (lambda: self.wire.send(data, peer)) if not peer.reliable else None
        return self._retransmit(send, cap=not invite, on_timeout=on_timeout)

    def forget(self, branch: str) -> None:
        self._clients.pop(branch, None)

    def in_dialog_request(self, d: Dialog, method: str, *, headers: list[tuple[str, str]] | None = None,
                          body: bytes = b"", content_type: str | None = None,
                          on_final: Callable[[Response | None], None] | None = None) -> None:
        """Send a request in the dialog (REFER ...): ``on_final`` gets its final response, or None after 64·T1."""
        d.local_cseq += 1
        branch = MAGIC + new_tag()
        req = self._dialog_request(d, method, branch, d.local_cseq)
        req.headers.add("Contact", self._contact(d.peer))
        for name, value in headers or []:
            req.headers.add(name, value)
        req.body = body
        if body and content_type:
            req.headers.add("Content-Type", content_type)
        req.headers.add("Content-Length", str(len(body)))
        done: list[_Retransmit] = []

        def on_response(resp: Response) -> None:
            if resp.code < 200 or resp.cseq.method != method:
                return
            self.forget(branch)
            if done:
                done[0].stop()
            if on_final is not None:
                on_final(resp)

        def timeout() -> None:
            self.forget(branch)
            if on_final is not None:
                on_final(None)

        done.append(self.client_request(bytes(req), d.peer, branch, on_response, invite=False, on_timeout=timeout))

    def _dialog_request(self, d: Dialog, method: str, branch: str, seq: int) -> Request:
        req = Request(method, URI.parse(d.remote_target))
        req.headers.add("Via", f"SIP/2.0/{d.peer.transport} {self._hostport()};branch={branch};rport")
        req.headers.add("Max-Forwards", "70")
        for route in d.route_set:
            req.headers.add("Route", route)
        req.headers.add("From", local_party(d))
        req.headers.add("To", remote_party(d))
        req.headers.add("Call-ID", d.call_id)
        req.headers.add("CSeq", str(CSeq(seq, method)))
        req.headers.add("User-Agent", self.settings.user_agent)
        return req

    def ack_2xx(self, d: Dialog, seq: int) -> bytes:
        """The ACK of a 2xx to our INVITE (its own transaction-less request, a new branch)."""
        req = self._dialog_request(d, "ACK", MAGIC + new_tag(), seq)
        req.headers.add("Content-Length", "0")
        data = bytes(req)
        self.wire.send(data, d.peer)
        return data

    def host_port(self) -> str:
        return self._hostport()

    def contact(self, peer: Peer) -> str:
        return self._contact(peer)

    # ------------------------------------------------------------ internals
    def _remember(self) -> None:
        """Forget transactions past their 64·T1 (oldest first: the table is in insertion order)."""
        now = self.clock.time()
        while self._tx:
            key, tx = next(iter(self._tx.items()))
            if tx.expires_at > now or (tx.retransmit is not None and not tx.retransmit.stopped):
                break
            del self._tx[key]

    def _invite_tx(self, d: Dialog) -> _ServerTx | None:
        key = self._tx_key(d.invite, d.invite.via[0])
        return self._tx.get((key, "INVITE"))

    def _await_ack(self, d: Dialog, seq: int, data: bytes) -> None:
        def lost() -> None:
            d._pending_ack = None
            if d.state == "terminated":
                return
            metrics.ERRORS.labels(SVC, "sip_ack_lost").inc()
            log.info("sip_ack_lost", detail="no ACK for our 2xx within 64*T1: BYE")
            self._send_bye(d)
            self.app.ack_lost(d)

        send = (lambda: self.wire.send(data, d.peer)) if not d.peer.reliable else None
        d._pending_ack = (seq, self._retransmit(send, cap=True, on_timeout=lost))

    def _send_bye(self, d: Dialog) -> None:
        if d.state == "terminated" and d._bye is not None:
            return
        d.local_cseq += 1
        branch = MAGIC + new_tag()
        req = Request("BYE", URI.parse(d.remote_target))
        req.headers.add("Via", f"SIP/2.0/{d.peer.transport} {self._hostport()};branch={branch};rport")
        req.headers.add("Max-Forwards", "70")
        for route in d.route_set:
            req.headers.add("Route", route)
        req.headers.add("From", local_party(d))
        req.headers.add("To", remote_party(d))
        req.headers.add("Call-ID", d.call_id)
        req.headers.add("CSeq", str(CSeq(d.local_cseq, "BYE")))
        req.headers.add("User-Agent", self.settings.user_agent)
        req.headers.add("Content-Length", "0")
        data = bytes(req)
        self._terminate(d)
        self.dialogs[d.key] = d  # kept until the BYE's final response (or its timeout)
        self._client_tx[branch] = d
        self.wire.send(data, d.peer)

        def timeout() -> None:
            self._client_tx.pop(branch, None)
            self.dialogs.pop(d.key, None)

        send = (lambda: self.wire.send(data, d.peer)) if not d.peer.reliable else None
        d._bye = self._retransmit(send, cap=True, on_timeout=timeout)

    def _terminate(self, d: Dialog) -> None:
        d.state = "terminated"
        if d._pending_ack is not None:
            d._pending_ack[1].stop()
            d._pending_ack = None
        if d._bye is None:
            self.dialogs.pop(d.key, None)

    def _retransmit(self, send: Callable[[], None] | None, *, cap: bool,
                    on_timeout: Callable[[], None] | None) -> _Retransmit:
        """Call ``send`` at T1, 2·T1, 4·T1 ... (capped at T2) until stopped; ``on_timeout`` after 64·T1."""
        r = _Retransmit()
        t1, t2 = self.settings.t1_s, self.settings.t2_s
        deadline = self.clock.time() + 64 * t1

        def fire(interval: float) -> None:
            if r.stopped:
                return
            if self.clock.time() >= deadline - 1e-9:
                r.stopped = True
                r.handle = None
                if on_timeout is not None:
                    on_timeout()
                return
            if send is not None:
                send()
            nxt = min(interval * 2, t2) if cap else interval * 2
            schedule(nxt)

        def schedule(interval: float) -> None:
            wait = min(interval, max(0.0, deadline - self.clock.time()))
            r.handle = self.clock.call_later(wait, lambda: fire(interval))

        schedule(t1)
        return r

    def _send_response(self, tx: _ServerTx, resp: Response, peer: Peer) -> None:
        data = bytes(resp)
        tx.response = data
        if resp.code >= 200:
            tx.final = resp.code
        self.wire.send(data, peer)

    def _reply(self, req: Request, peer: Peer, code: int, *, key: str | None = None, dialog: Dialog | None = None,
               headers: list[tuple[str, str]] | None = None) -> None:
        """Answer a non-INVITE request (or refuse an INVITE) and remember the answer for its retransmissions."""
        resp = self._response(req, code, dialog=dialog, headers=headers or [],
                              to_tag=None if dialog is not None or code < 200 else new_tag())
        data = bytes(resp)
        if key is not None:
            self._remember()
            self._tx[(key, req.method)] = _ServerTx(req.method, dialog, response=data, final=code,
                                                    expires_at=self.clock.time() + 64 * self.settings.t1_s)
        self.wire.send(data, peer)

    def _response(self, req: Request, code: int, *, dialog: Dialog | None = None, body: bytes = b"",
                  headers: list[tuple[str, str]] | None = None, to_tag: str | None = None) -> Response:
        resp = Response(code, REASONS.get(code, "Unknown"), body=body)
        resp.headers.setlist("Via", req.headers.getlist("Via"))
        resp.headers.add("From", req.headers["From"])
        to = req.headers["To"]
        tag = dialog.local_tag if dialog is not None else to_tag
        if tag and code > 100 and "tag" not in req.to_address.parameters:
            to = _with_tag(to, tag)
        resp.headers.add("To", to)
        resp.headers.add("Call-ID", req.call_id)
        resp.headers.add("CSeq", req.headers["CSeq"])
        if dialog is not None and req.method == "INVITE" and 100 < code < 300:
            for rr in req.headers.getlist("Record-Route"):
                resp.headers.add("Record-Route", rr)
            resp.headers.add("Contact", self._contact(dialog.peer))
        elif dialog is not None and code < 300 and req.method == "UPDATE":
            resp.headers.add("Contact", self._contact(dialog.peer))
        for name, value in headers or []:
            resp.headers.add(name, value)
        resp.headers.add("Server", self.settings.user_agent)
        if body:
            resp.headers.add("Content-Type", "application/sdp")
        resp.headers.add("Content-Length", str(len(body)))
        return resp

    def _hostport(self) -> str:
        host = self.settings.local_host
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.settings.local_port}"

    def _contact(self, peer: Peer) -> str:
        suffix = ";transport=tcp" if peer.transport == "TCP" else ""
        return f"<sip:{self._hostport()}{suffix}>"


def stamp_via(req: Request, peer: Peer) -> None:
    """Record in the request's top Via where it really came from (``received``/``rport``, RFC 3261 18.2.1 and
    RFC 3581), so every response goes back there: the transport calls it before handing a request in."""
    vias = req.via
    if not vias:
        return
    req.headers.setlist("Via", [str(_stamp(vias[0], peer)), *(str(v) for v in vias[1:])])


def _stamp(top: Via, peer: Peer) -> Via:
    changes: dict[str, str | None] = {}
    if top.host.strip("[]") != peer.host:
        changes["received"] = peer.host
    if "rport" in top.parameters:
        changes["rport"] = str(peer.port)
    if not changes:
        return top
    return Via(transport=top.transport, host=top.host, port=top.port, parameters=top.parameters.replace(**changes))


def _with_tag(header: str, tag: str) -> str:
    return f"{header};tag={tag}"


def local_party(d: Dialog) -> str:
    """Our end of the dialog as a From (or To) header: the INVITE's To with our tag when the peer called us."""
    return d.local_party or _with_tag(d.invite.headers["To"], d.local_tag)


def remote_party(d: Dialog) -> str:
    return d.remote_party or d.invite.headers["From"]


def _capabilities() -> list[tuple[str, str]]:
    return [("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", SUPPORTED)]


def _session_expires(req: Request) -> int | None:
    value = req.headers.get("Session-Expires")
    if value is None:
        return None
    digits = value.split(";", 1)[0].strip()
    if not digits.isdigit():
        raise ValueError("bad Session-Expires")
    return int(digits)


def _timer_headers(req: Request, se: int | None) -> list[tuple[str, str]]:
    """RFC 4028: the interval the caller asked for, refreshed by the caller (we never send refreshes)."""
    if se is None:
        return []
    headers = [("Session-Expires", f"{se};refresher=uac")]
    if "timer" in [s.lower() for s in req.supported]:
        headers.append(("Require", "timer"))
    return headers


def _info_digit(req: Request) -> str | None:
    ct = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    text = req.body.decode("ascii", "replace")
    if ct == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                text = value
                break
        else:
            return None
    elif ct != "application/dtmf":
        return None
    digit = text.strip().upper()[:2]
    if digit == "10":
        digit = "*"
    elif digit == "11":
        digit = "#"
    return digit if len(digit) == 1 and digit in "0123456789*#ABCD" else None

