"""SIP user agent client: our INVITE to a trunk (outbound calls), on the user agent server's socket and timers.

``invite`` runs one client INVITE transaction (RFC 3261 §17.1.1) and what follows it:

- over UDP the INVITE is sent again at T1, 2·T1, 4·T1 ... until a response (no response within 64·T1: failed);
- 180/183 → ``on_ringing`` (once); a 2xx → the dialog (the To tag, the Contact as remote target, the
  Record-Route reversed as route set), the ACK (sent again for each retransmitted 2xx), ``answered``;
- a 401/407 with a digest challenge → the ACK, then the INVITE again (CSeq + 1, a new branch, the same Call-ID and
  From tag) with Authorization / Proxy-Authorization from the trunk's credentials; once more only for
  ``stale=true``, so wrong credentials end as ``rejected``;
- any other final response → the ACK (same branch), and the outcome: 486/600 busy; 408/480/487 no_answer;
  403/603 rejected; anything else failed;
- no answer within ``timeout_s`` → CANCEL once a provisional response has come (RFC 3261 §9.1), then the 487 is
  ACKed (``no_answer``); a 2xx that crosses the CANCEL is ACKed and the call hung up with BYE.

Logs name no numbers or addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from sipmessage import Message, Request, Response
from voice_runtime.logging import get_logger

from .sip_dialogs import ALLOW, MAGIC, Cancellable, Dialog, Peer, UserAgentServer, new_tag
from .sip_digest import Credentials, pick_challenge

log = get_logger(__name__)

Status = Literal["answered", "busy", "no_answer", "failed", "rejected"]
CANCEL_WAIT_T1 = 64


@dataclass
class InviteResult:
    status: Status
    detail: str = ""
    dialog: Dialog | None = None
    answer: bytes = b""  # the SDP of the 2xx


def outcome(code: int) -> Status:
    if code in (486, 600):
        return "busy"
    if code in (408, 480, 487):
        return "no_answer"
    if code in (401, 403, 407, 603):
        return "rejected"
    return "failed"


async def invite(uas: UserAgentServer, peer: Peer, *, request_uri: str, from_uri: str, to_uri: str, sdp: str,
                 credentials: Credentials | None, timeout_s: float,
                 on_ringing: Callable[[], Awaitable[None]] | None = None,
                 extra_headers: list[tuple[str, str]] | None = None) -> InviteResult:
    loop = asyncio.get_running_loop()
    call_id = f"{new_tag()}{new_tag()}@{uas.settings.local_host}"
    from_header = f"<{from_uri}>;tag={new_tag()}"
    to_header = f"<{to_uri}>"
    deadline = loop.time() + timeout_s
    t1 = uas.settings.t1_s
    cseq = 0
    auth: tuple[str, str] | None = None
    attempts = 0
    ringing = False
    while True:
        cseq += 1
        branch = MAGIC + new_tag()
        headers = [("Via", f"SIP/2.0/{peer.transport} {uas.host_port()};branch={branch};rport"),
                   ("Max-Forwards", "70"), ("From", from_header), ("To", to_header), ("Call-ID", call_id),
                   ("CSeq", f"{cseq} INVITE"), ("Contact", uas.contact(peer)), ("Allow", ALLOW),
                   ("Supported", "timer"), ("User-Agent", uas.settings.user_agent), *(extra_headers or [])]
        if auth is not None:
            headers.append(auth)
        data = _request("INVITE", request_uri, headers, sdp.encode(), "application/sdp")
        sent = Message.parse(data)
        assert isinstance(sent, Request)
        queue: asyncio.Queue[Response | None] = asyncio.Queue(64)

        def on_response(resp: Response, q: asyncio.Queue[Response | None] = queue) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(resp)

        def on_timeout(q: asyncio.Queue[Response | None] = queue) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

        retransmit = uas.client_request(data, peer, branch, on_response, invite=True, on_timeout=on_timeout)
        provisional = False
        cancelled = False
        cancel_again: Cancellable | None = None
        keep_branch = False
        try:
            while True:
                wait = deadline - loop.time()
                if cancelled:
                    wait = CANCEL_WAIT_T1 * t1
                try:
                    resp = await asyncio.wait_for(queue.get(), max(0.001, wait))
                except TimeoutError:
                    if cancelled:
                        return InviteResult("no_answer", "no final response to our CANCEL")
                    if not provisional:
                        return InviteResult("failed", "no response from the trunk")
                    cancel_again = _send_cancel(uas, peer, sent, branch)
                    cancelled = True
                    continue
                if resp is None:
                    return InviteResult("failed", "no response from the trunk")
                if resp.cseq.method != "INVITE":
                    if cancel_again is not None:  # the response to our CANCEL
                        cancel_again.cancel()
                    continue
                if resp.code < 200:
                    retransmit.stop()
                    provisional = True
                    if resp.code in (180, 183) and not ringing:
                        ringing = True
                        if on_ringing is not None:
                            await on_ringing()
                    continue
                retransmit.stop()
                if resp.code < 300:
                    d = _dialog(uas, peer, sent, resp, from_header, cseq)
                    ack = uas.ack_2xx(d, cseq)
                    keep_branch = True
                    uas._clients[branch] = _again(uas, peer, ack, lambda code: 200 <= code < 300)
                    uas.clock.call_later(64 * t1, functools.partial(uas.forget, branch))
                    if cancelled:
                        uas.hangup(d)
                        return InviteResult("no_answer", "answered as the CANCEL went out: hung up")
                    return InviteResult("answered", dialog=d, answer=resp.body)
                keep_branch = True  # the final response again: the ACK again
                _ack_final(uas, peer, sent, resp, branch)
                if resp.code in (401, 407) and credentials is not None and not cancelled:
                    name = "WWW-Authenticate" if resp.code == 401 else "Proxy-Authenticate"
                    challenge = pick_challenge(resp.headers.getlist(name))
                    if challenge is not None and (attempts == 0 or (challenge.stale and attempts < 2)):
                        attempts += 1
                        header = credentials.authorization(challenge, method="INVITE", uri=request_uri)
                        auth = ("Authorization" if resp.code == 401 else "Proxy-Authorization", header)
                        break  # the INVITE again, with credentials
                status = outcome(resp.code)
                return InviteResult(status, f"{resp.code} {resp.phrase}"[:100])
        finally:
            retransmit.stop()
            if cancel_again is not None:
                cancel_again.cancel()
            if not keep_branch:
                uas.forget(branch)


def _request(method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b"",
             content_type: str | None = None) -> bytes:
    lines = [f"{method} {uri} SIP/2.0", *(f"{n}: {v}" for n, v in headers)]
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _again(uas: UserAgentServer, peer: Peer, ack: bytes, which: Callable[[int], bool]) -> Callable[[Response], None]:
    """A handler that sends ``ack`` again for each retransmission of the final response it acknowledged."""
    def handle(resp: Response) -> None:
        if which(resp.code):
            uas.wire.send(ack, peer)

    return handle


def _send_cancel(uas: UserAgentServer, peer: Peer, invite: Request, branch: str) -> Cancellable | None:
    """CANCEL of our INVITE: its Request-URI, Call-ID, From, To, top Via and CSeq number (RFC 3261 §9.1)."""
    headers = [("Via", invite.headers.getlist("Via")[0]), ("Max-Forwards", "70"), ("From", invite.headers["From"]),
               ("To", invite.headers["To"]), ("Call-ID", invite.call_id),
               ("CSeq", f"{invite.cseq.sequence} CANCEL"), ("User-Agent", uas.settings.user_agent)]
    for route in invite.headers.getlist("Route"):
        headers.append(("Route", route))
    data = _request("CANCEL", str(invite.uri), headers)
    uas.wire.send(data, peer)
    if peer.reliable:
        return None
    # a lost CANCEL is sent again once, after T1, unless its 200 came first
    return uas.clock.call_later(uas.settings.t1_s, lambda: uas.wire.send(data, peer))


def _ack_final(uas: UserAgentServer, peer: Peer, invite: Request, resp: Response, branch: str) -> None:
    """The ACK of a non-2xx final response: part of the INVITE transaction (its branch; To from the response)."""
    headers = [("Via", invite.headers.getlist("Via")[0]), ("Max-Forwards", "70"), ("From", invite.headers["From"]),
               ("To", resp.headers["To"]), ("Call-ID", invite.call_id), ("CSeq", f"{invite.cseq.sequence} ACK"),
               ("User-Agent", uas.settings.user_agent)]
    data = _request("ACK", str(invite.uri), headers)
    uas.wire.send(data, peer)
    # the response again (our ACK was lost): ACK it again
    uas._clients[branch] = _again(uas, peer, data, lambda code: code >= 300)
    uas.clock.call_later(32 * uas.settings.t1_s, functools.partial(uas.forget, branch))


def _dialog(uas: UserAgentServer, peer: Peer, invite: Request, resp: Response, from_header: str,
            cseq: int) -> Dialog:
    to_tag = str(resp.to_address.parameters.get("tag") or "")
    contact = resp.contact
    d = Dialog(call_id=invite.call_id, local_tag=str(invite.from_address.parameters.get("tag") or ""),
               remote_tag=to_tag, peer=peer, invite=invite,
               remote_target=str(contact[0].uri) if contact else str(invite.uri),
               route_set=[str(a) for a in reversed(resp.record_route)], remote_cseq=-1, state="confirmed",
               local_cseq=cseq, answered=True, local_party=from_header, remote_party=resp.headers["To"])
    uas.dialogs[d.key] = d
    return d
