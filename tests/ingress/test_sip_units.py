"""SIP pieces as units: SDP offer/answer, RTP packets, the jitter buffer, RFC 4733 DTMF, the playout queue, numbers,
and the user agent server's transactions, dialogs and timers on a fake clock (no sockets)."""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sipmessage import Message, Request, Response
from voice_ingress import rtp, sdp
from voice_ingress.sip_dialogs import ALLOW, Dialog, Peer, UasSettings, UserAgentServer
from voice_ingress.transports.sip import SipSettings, normalise_number, provider_id
from voice_schemas import subjects

pytestmark = pytest.mark.unit


def offer(*media: str, c: str = "192.0.2.10", session: str = "") -> str:
    return "\r\n".join(["v=0", "o=- 1 1 IN IP4 192.0.2.10", "s=-", f"c=IN IP4 {c}", "t=0 0",
                        *([session] if session else []), *media]) + "\r\n"


AUDIO = "m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15"


# ---------------------------------------------------------------- SDP
def test_answer_keeps_the_offers_m_lines_in_order_and_takes_the_first_audio_with_g711() -> None:
    o = sdp.parse(offer("m=video 5000 RTP/AVP 96", "m=audio 4000 RTP/AVP 18 8 0 96",
                        "a=rtpmap:96 telephone-event/8000", "m=audio 4002 RTP/AVP 0"))
    n = sdp.negotiate(o, address="198.51.100.1", port=20000)
    assert (n.encoding, n.payload_type, n.dtmf_payload_type) == ("PCMA", 8, 96)  # the offerer's first choice
    assert (n.remote_host, n.remote_port, n.direction) == ("192.0.2.10", 4000, "sendrecv")
    m_lines = [x for x in n.sdp.split("\r\n") if x.startswith("m=")]
    assert m_lines == ["m=video 0 RTP/AVP 96", "m=audio 20000 RTP/AVP 8 96", "m=audio 0 RTP/AVP 0"]
    assert "a=rtpmap:96 telephone-event/8000" in n.sdp and "c=IN IP4 198.51.100.1" in n.sdp


def test_dynamic_payload_types_named_by_rtpmap_are_taken() -> None:
    o = sdp.parse(offer("m=audio 4000 RTP/AVP 110 97", "a=rtpmap:110 PCMU/8000", "a=rtpmap:97 telephone-event/8000"))
    n = sdp.negotiate(o, address="198.51.100.1", port=20000)
    assert (n.encoding, n.payload_type, n.dtmf_payload_type, n.law) == ("PCMU", 110, 97, "ulaw")


def test_no_g711_is_no_common_codec_and_garbage_is_an_sdp_error() -> None:
    with pytest.raises(sdp.NoCommonCodec):
        sdp.negotiate(sdp.parse(offer("m=audio 4000 RTP/AVP 18 9", "a=rtpmap:9 G722/8000")), address="1.2.3.4",
                      port=1)
    with pytest.raises(sdp.NoCommonCodec):
        sdp.negotiate(sdp.parse(offer("m=audio 4000 RTP/SAVP 0")), address="1.2.3.4", port=1)  # SRTP only
    for bad in ["hello", "v=0\r\nc=IN IP4 nothost\r\n", "v=0\r\nm=audio x RTP/AVP 0\r\n", "x" * 10000]:
        with pytest.raises(sdp.SdpError):
            sdp.parse(bad)


@pytest.mark.parametrize("offered,answered,we_send", [
    ("a=sendrecv", "sendrecv", True),
    ("a=sendonly", "recvonly", False),  # hold: never answered sendrecv
    ("a=inactive", "inactive", False),
    ("a=recvonly", "sendonly", True),
])
def test_direction_is_mirrored(offered: str, answered: str, we_send: bool) -> None:
    n = sdp.negotiate(sdp.parse(offer(AUDIO + "\r\n" + offered)), address="1.2.3.4", port=1)
    assert n.direction == answered and f"a={answered}" in n.sdp and n.we_send is we_send


def test_old_style_hold_with_a_null_address_is_a_hold() -> None:
    n = sdp.negotiate(sdp.parse(offer(AUDIO, c="0.0.0.0")), address="1.2.3.4", port=1)
    assert n.direction == "recvonly" and not n.we_send


# ---------------------------------------------------------------- RTP
def test_rtp_round_trip_and_headers_we_do_not_write() -> None:
    p = rtp.RtpPacket(payload_type=8, seq=65535, timestamp=2**32 - 1, ssrc=1234, payload=b"\xd5" * 160, marker=True)
    assert rtp.parse(rtp.build(p)) == p
    # 2 CSRCs, a header extension of one word, 3 bytes of padding
    head = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0, 7, 160, 99) + b"\0" * 8 + b"\xbe\xde\x00\x01" + b"\0" * 4
    got = rtp.parse(head + b"abc" + b"\0\0\x03")
    assert (got.seq, got.payload) == (7, b"abc")
    for bad in [b"", b"\x80" * 5, b"\x40" + b"\0" * 20, struct.pack("!BBHII", 0x80, 200, 1, 1, 1)]:
        with pytest.raises(rtp.RtpError):
            rtp.parse(bad)


def test_the_sender_keeps_steady_sequence_and_timestamps() -> None:
    s = rtp.RtpSender(0)
    packets = []
    for _ in range(3):
        packets.append(rtp.parse(s.packet(b"\xff" * 160)))
        s.tick()
    assert [(p.seq - packets[0].seq) % 65536 for p in packets] == [0, 1, 2]
    assert [(p.timestamp - packets[0].timestamp) % 2**32 for p in packets] == [0, 160, 320]
    assert [p.marker for p in packets] == [True, False, False] and len({p.ssrc for p in packets}) == 1


def test_jitter_buffer_reorders_drops_duplicates_and_late_packets() -> None:
    jb = rtp.JitterBuffer(max_wait_s=0.06)
    jb.push(100, b"a", 0.0)
    assert jb.pop(0.0) == [b"a"]  # in order: no added delay
    jb.push(102, b"c", 0.02)
    assert jb.pop(0.02) == []  # 101 may still come
    jb.push(101, b"b", 0.03)
    jb.push(101, b"b", 0.03)
    assert jb.pop(0.03) == [b"b", b"c"] and jb.duplicates == 1
    jb.push(100, b"old", 0.04)
    assert jb.pop(0.04) == [] and jb.late == 1


def test_jitter_buffer_gives_up_on_a_gap_with_silence_and_wraps_sequence_numbers() -> None:
    jb = rtp.JitterBuffer(max_wait_s=0.06)
    jb.push(65534, b"a", 0.0)
    jb.push(1, b"d", 0.01)  # 65535 and 0 lost
    assert jb.pop(0.01) == [b"a"]
    assert jb.pop(0.05) == []
    assert jb.pop(0.08) == [None, None, b"d"] and jb.lost == 2


def test_jitter_buffer_is_bounded() -> None:
    jb = rtp.JitterBuffer(max_wait_s=10, capacity=5)
    jb.push(0, b"0", 0)
    jb.pop(0)
    for seq in range(2, 40):  # 1 never comes, and nothing is taken
        jb.push(seq, b"x", 0)
        assert len(jb) <= 5
    assert jb.overflow == 33
    assert jb.pop(0) == [None, b"x", b"x", b"x", b"x", b"x"]  # full: the gap is given up without waiting


def event(code: int, end: bool, duration: int = 160) -> bytes:
    return bytes([code, (0x80 if end else 0) | 10]) + struct.pack("!H", duration)


def test_dtmf_digit_reported_once_on_its_end_bit_without_a_marker() -> None:
    d = rtp.DtmfReceiver()
    got = []
    for i in range(4):
        got += d.push(1000, event(5, False, 160 * (i + 1)))
    assert got == []
    for _ in range(3):  # the End packet is sent three times
        got += d.push(1000, event(5, True, 800))
    got += d.push(2000, event(11, False)) + d.push(2000, event(11, True)) + d.push(2000, event(11, True))
    got += d.push(3000, event(10, True))
    assert got == ["5", "#", "*"]


def test_dtmf_whose_end_packets_were_lost_is_reported_when_the_next_event_starts() -> None:
    d = rtp.DtmfReceiver()
    assert d.push(1000, event(1, False)) == []
    assert d.push(2000, event(2, False)) == ["1"]
    assert d.push(2000, event(2, True)) == ["2"]
    assert d.push(3000, event(16, True)) == []  # flash and others are not digits
    assert d.push(3000, b"\x01") == []


def test_playout_queue_reports_a_mark_once_the_audio_before_it_was_handed_out_and_clear_drops_it() -> None:
    q = rtp.PlayoutQueue(max_payloads=3)
    q.put(b"1")
    q.put(b"2")
    q.put_mark("a")
    q.put(b"3")
    q.put(b"4")  # over the bound: dropped
    assert q.dropped == 1
    assert q.take() == (b"1", [])
    assert q.take() == (b"2", [])
    assert q.take() == (b"3", ["a"])
    q.put(b"5")
    q.put_mark("b")
    q.clear()
    assert q.take() == (None, []) and q.queued == 0


# ---------------------------------------------------------------- numbers and settings
@pytest.mark.parametrize("user,prefix,number", [
    ("+15550100", "", "+15550100"),
    ("+1-555-0100", "", "+15550100"),
    ("5550100", "", None),
    ("5550100", "+1", "+15550100"),
    ("02079460000", "+44", "+442079460000"),
    ("0015550100", "+44", "+15550100"),
    ("alice", "+1", None),
    (None, "+1", None),
])
def test_numbers_are_made_e164(user: str | None, prefix: str, number: str | None) -> None:
    assert normalise_number(user, prefix) == number


def test_provider_ids_are_subject_safe_and_distinct() -> None:
    a, b = provider_id("1-123@127.0.0.1"), provider_id("1-123.127.0.0.1")
    assert a != b
    for p in (a, b, provider_id("x" * 300 + "*>.")):
        assert subjects.provider_key(p)


def test_sip_settings_are_checked() -> None:
    bad: list[dict[str, Any]] = [
        {"sip_rtp_port_min": 20000}, {"sip_rtp_port_min": 30000, "sip_rtp_port_max": 20000},
        {"sip_default_number": "5550100"}, {"sip_default_country_prefix": "1"},
        {"sip_allowed_sources": "not-a-network"}, {"sip_advertised_address": "host"},
        {"sip_t1_ms": 500, "sip_t2_ms": 100},
    ]
    for settings in bad:
        with pytest.raises(ValueError):
            SipSettings(**settings)


# ---------------------------------------------------------------- the user agent server on a fake clock
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Callable[[], None], list[bool]]] = []
        self._n = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        self._n += 1
        flag = [False]
        self.timers.append((self.now + delay, self._n, callback, flag))
        return _Handle(flag)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if t[0] <= end + 1e-9 and not t[3][0]), key=lambda t: t[:2])
            if not due:
                break
            t = due[0]
            self.timers.remove(t)
            self.now = max(self.now, t[0])
            t[2]()
        self.now = end


@dataclass
class _Handle:
    flag: list[bool]

    def cancel(self) -> None:
        self.flag[0] = True


@dataclass
class FakeApp:
    """Answers every INVITE at once (or not, ``manual``), mirrors hold like the endpoint."""

    manual: bool = False
    uas: UserAgentServer | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    dialogs: list[Dialog] = field(default_factory=list)

    def invite(self, dialog: Dialog, request: Request) -> None:
        self.dialogs.append(dialog)
        if not self.manual:
            assert self.uas is not None
            body = request.body
            self.uas.answer(dialog, self._answer(body) if body.strip() else
                            sdp.make_offer(address="198.51.100.1", port=20000))

    def _answer(self, body: bytes) -> str:
        return sdp.negotiate(sdp.parse(body), address="198.51.100.1", port=20000).sdp

    def cancelled(self, dialog: Dialog) -> None:
        self.events.append(("cancelled", dialog.call_id))

    def reoffer(self, dialog: Dialog, body: bytes) -> str:
        return self._answer(body)

    def current_answer(self, dialog: Dialog) -> str:
        return "v=0\r\n"

    def bye(self, dialog: Dialog) -> None:
        self.events.append(("bye", dialog.call_id))

    def ack_lost(self, dialog: Dialog) -> None:
        self.events.append(("ack_lost", dialog.call_id))

    def dtmf(self, dialog: Dialog, digit: str) -> None:
        self.events.append(("dtmf", digit))

    def acked(self, dialog: Dialog, body: bytes) -> None:
        self.events.append(("acked", body.decode()))

    def notify(self, dialog: Dialog, request: Request) -> None:
        self.events.append(("notify", request.body.decode()))


class FakeWire:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, Response | Request]] = []

    def send(self, data: bytes, peer: Peer) -> None:
        self.sent.append((self.clock.now, Message.parse(data)))

    def responses(self, code: int | None = None, method: str | None = None) -> list[tuple[float, Response]]:
        return [(t, m) for t, m in self.sent if isinstance(m, Response) and (code is None or m.code == code)
                and (method is None or m.cseq.method == method)]

    def requests(self, method: str) -> list[Request]:
        return [m for _, m in self.sent if isinstance(m, Request) and m.method == method]


PEER = Peer("UDP", "192.0.2.10", 5062)


def make_uas(*, manual: bool = False, **settings: object) -> tuple[UserAgentServer, FakeApp, FakeWire, FakeClock]:
    clock = FakeClock()
    wire = FakeWire(clock)
    app = FakeApp(manual=manual)
    uas = UserAgentServer(app, wire, clock, UasSettings(**settings))  # type: ignore[arg-type]
    app.uas = uas
    return uas, app, wire, clock


def request(method: str, *, branch: str = "z9hG4bK-1", call_id: str = "c1", cseq: int = 1, to_tag: str = "",
            body: str = "", extra: str = "", cseq_method: str | None = None) -> bytes:
    to = "<sip:+15550100@198.51.100.1>" + (f";tag={to_tag}" if to_tag else "")
    ct = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{method} sip:+15550100@198.51.100.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch};rport\r\n"
            "From: <sip:+15550199@192.0.2.10>;tag=caller\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {cseq_method or method}\r\n"
            "Contact: <sip:caller@192.0.2.10:5062>\r\nMax-Forwards: 70\r\n"
            f"{extra}{ct}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def invite(uas: UserAgentServer, wire: FakeWire, **kw: object) -> str:
    uas.receive(request("INVITE", body=offer(AUDIO), **kw), PEER)  # type: ignore[arg-type]
    ok = wire.responses(200, "INVITE")
    return str(ok[-1][1].to_address.parameters["tag"]) if ok else ""


def test_invite_gets_100_then_200_with_an_answer_and_the_via_says_where_it_came_from() -> None:
    uas, _, wire, _ = make_uas()
    invite(uas, wire)
    codes = [m.code for _, m in wire.responses()]
    assert codes == [100, 200]
    ok = wire.responses(200)[0][1]
    assert "m=audio 20000 RTP/AVP 0 101" in ok.body.decode() and ok.headers["Content-Type"] == "application/sdp"
    assert ok.via[0].parameters["rport"] == "5062" and ok.contact


def test_200_is_retransmitted_t1_doubling_to_t2_until_the_ack() -> None:
    uas, app, wire, clock = make_uas(t1_s=0.5, t2_s=4.0)
    tag = invite(uas, wire)
    clock.advance(8.0)
    times = [t for t, _ in wire.responses(200, "INVITE")]
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [0.5, 1.0, 2.0, 4.0]
    uas.receive(request("ACK", to_tag=tag), PEER)
    clock.advance(30.0)
    assert len(wire.responses(200, "INVITE")) == len(times) and app.events == []
    assert uas.dialogs[("c1", tag)].state == "confirmed"


def test_no_ack_within_64_t1_ends_the_call_with_a_bye() -> None:
    uas, app, wire, clock = make_uas(t1_s=0.05, t2_s=0.4)
    tag = invite(uas, wire)
    clock.advance(64 * 0.05 - 0.01)
    assert wire.requests("BYE") == []
    clock.advance(0.02)
    [bye] = wire.requests("BYE")
    assert app.events == [("ack_lost", "c1")]
    assert bye.from_address.parameters["tag"] == tag and bye.to_address.parameters["tag"] == "caller"
    assert str(bye.uri) == "sip:caller@192.0.2.10:5062"
    clock.advance(0.2)
    assert len(wire.requests("BYE")) > 1  # retransmitted over UDP until answered
    uas.receive(_response_to(wire.requests("BYE")[0], 200), PEER)
    n = len(wire.requests("BYE"))
    clock.advance(5)
    assert len(wire.requests("BYE")) == n and not uas.dialogs


def _response_to(req: Request, code: int) -> bytes:
    return (f"SIP/2.0 {code} OK\r\nVia: {req.headers['Via']}\r\nFrom: {req.headers['From']}\r\n"
            f"To: {req.headers['To']}\r\nCall-ID: {req.call_id}\r\nCSeq: {req.headers['CSeq']}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_cancel_before_the_answer_gets_200_and_the_invite_487() -> None:
    uas, app, wire, clock = make_uas(manual=True)
    uas.receive(request("INVITE", body=offer(AUDIO)), PEER)
    uas.receive(request("CANCEL"), PEER)
    assert [m.code for _, m in wire.responses(method="CANCEL")] == [200]
    [(_, r487)] = wire.responses(487, "INVITE")
    assert app.events == [("cancelled", "c1")] and app.dialogs[0].state == "terminated"
    assert uas.answer(app.dialogs[0], "v=0\r\n") is False  # too late to answer
    uas.receive(request("ACK", to_tag=str(r487.to_address.parameters["tag"])), PEER)  # same branch: absorbed
    clock.advance(40)
    assert len(wire.responses(487)) == 1  # the ACK stopped its retransmissions
    uas.receive(request("CANCEL", branch="z9hG4bK-other"), PEER)
    assert wire.responses(481, "CANCEL")


def test_a_retransmitted_invite_gets_the_same_answer_not_a_new_call() -> None:
    uas, app, wire, _ = make_uas()
    invite(uas, wire)
    invite(uas, wire)
    assert len(app.dialogs) == 1 and len(wire.responses(200, "INVITE")) == 2
    assert len({str(m.to_address.parameters["tag"]) for _, m in wire.responses(200)}) == 1


def test_bye_ends_the_dialog_and_an_unknown_dialog_gets_481() -> None:
    uas, app, wire, _ = make_uas()
    tag = invite(uas, wire)
    uas.receive(request("ACK", to_tag=tag), PEER)
    uas.receive(request("BYE", branch="z9hG4bK-2", cseq=2, to_tag=tag), PEER)
    assert wire.responses(200, "BYE") and app.events == [("bye", "c1")]
    uas.receive(request("BYE", branch="z9hG4bK-2", cseq=2, to_tag=tag), PEER)  # retransmitted: same 200
    assert len(wire.responses(200, "BYE")) == 2 and app.events == [("bye", "c1")]
    uas.receive(request("BYE", branch="z9hG4bK-3", cseq=3, to_tag="nope"), PEER)
    uas.receive(request("BYE", branch="z9hG4bK-4", call_id="other"), PEER)
    assert len(wire.responses(481, "BYE")) == 2


def test_hold_reinvite_is_answered_with_the_mirrored_direction_and_acked() -> None:
    uas, _, wire, clock = make_uas()
    tag = invite(uas, wire)
    uas.receive(request("ACK", to_tag=tag), PEER)
    uas.receive(request("INVITE", branch="z9hG4bK-5", cseq=2, to_tag=tag, body=offer(AUDIO + "\r\na=sendonly"),
                        extra="Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n"), PEER)
    (_, ok) = wire.responses(200, "INVITE")[-1]
    assert "a=recvonly" in ok.body.decode() and ok.headers["Session-Expires"] == "1800;refresher=uac"
    assert ok.headers["Require"] == "timer"
    uas.receive(request("ACK", to_tag=tag, cseq=2, branch="z9hG4bK-6"), PEER)
    n = len(wire.responses(200, "INVITE"))
    clock.advance(40)
    assert len(wire.responses(200, "INVITE")) == n  # acknowledged: no retransmission, no BYE
    assert wire.requests("BYE") == []
    # a refresh without an offer (UPDATE) is accepted too
    uas.receive(request("UPDATE", branch="z9hG4bK-7", cseq=3, to_tag=tag,
                        extra="Session-Expires: 1800;refresher=uac\r\n"), PEER)
    assert wire.responses(200, "UPDATE")
    uas.receive(request("UPDATE", branch="z9hG4bK-8", cseq=4, to_tag=tag, extra="Session-Expires: 30\r\n"), PEER)
    assert wire.responses(422, "UPDATE")[0][1].headers["Min-SE"] == "90"


def test_a_reoffer_without_g711_gets_488_and_the_call_goes_on() -> None:
    uas, _, wire, _ = make_uas()
    tag = invite(uas, wire)
    uas.receive(request("ACK", to_tag=tag), PEER)
    uas.receive(request("INVITE", branch="z9hG4bK-9", cseq=2, to_tag=tag, body=offer("m=audio 4000 RTP/AVP 9")),
                PEER)
    assert wire.responses(488, "INVITE") and uas.dialogs[("c1", tag)].state == "confirmed"


def test_options_unknown_methods_and_info_dtmf() -> None:
    uas, app, wire, _ = make_uas()
    uas.receive(request("OPTIONS"), PEER)
    [(_, ok)] = wire.responses(200, "OPTIONS")
    assert ok.headers["Allow"] == ALLOW
    uas.receive(request("REGISTER", branch="z9hG4bK-r"), PEER)
    uas.receive(request("FOO", branch="z9hG4bK-f"), PEER)
    assert [m.headers["Allow"] for _, m in wire.responses(405)] == [ALLOW, ALLOW]
    tag = invite(uas, wire, branch="z9hG4bK-i")
    uas.receive(request("INFO", branch="z9hG4bK-n", cseq=2, to_tag=tag,
                        extra="Content-Type: application/dtmf-relay\r\n", body="Signal=7\r\nDuration=160\r\n"), PEER)
    assert ("dtmf", "7") in app.events


@pytest.mark.parametrize("data", [
    b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-b\r\nCall-ID: c\r\n\r\n",
    b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-c\r\nFrom: <sip:a@b>;tag=1\r\n"
    b"To: <sip:x@y>\r\nCall-ID: c\r\nCSeq: nope\r\n\r\n",
    b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-d\r\nthis line has no colon\r\n\r\n",
])
def test_malformed_requests_get_400(data: bytes) -> None:
    uas, app, wire, _ = make_uas()
    uas.receive(data, PEER)
    assert [m.code for _, m in wire.responses()] == [400] and app.dialogs == []


def test_garbage_is_ignored() -> None:
    uas, app, wire, _ = make_uas()
    for data in [b"", b"\r\n\r\n", b"\x00\xff" * 50, b"hello", b"SIP/2.0 200 OK\r\n\r\n", b"x" * 70000]:
        uas.receive(data, PEER)
    assert wire.sent == [] and app.dialogs == []


def test_sources_outside_the_allow_list_get_403_and_no_dialog() -> None:
    uas, app, wire, _ = make_uas(allowed=[ipaddress.ip_network("203.0.113.0/24")])
    uas.receive(request("INVITE", body=offer(AUDIO)), PEER)
    assert [m.code for _, m in wire.responses()] == [403] and app.dialogs == []
    uas.receive(request("INVITE", body=offer(AUDIO), branch="z9hG4bK-ok"), Peer("UDP", "203.0.113.7", 5060))
    assert len(app.dialogs) == 1


def test_each_source_is_rate_limited() -> None:
    uas, _, wire, clock = make_uas(rate_per_s=10, rate_burst=20)
    for i in range(100):
        uas.receive(request("OPTIONS", branch=f"z9hG4bK-{i}"), PEER)
    assert len(wire.responses(200)) == 20 and uas.refused == 80
    uas.receive(request("OPTIONS", branch="z9hG4bK-x"), Peer("UDP", "192.0.2.99", 5060))  # another source
    clock.advance(1.0)
    for i in range(100, 120):
        uas.receive(request("OPTIONS", branch=f"z9hG4bK-{i}"), PEER)
    assert len(wire.responses(200)) == 20 + 1 + 10


def test_required_extensions_we_lack_get_420() -> None:
    uas, app, wire, _ = make_uas()
    uas.receive(request("INVITE", body=offer(AUDIO), extra="Require: 100rel\r\n"), PEER)
    assert wire.responses(420)[0][1].headers["Unsupported"] == "100rel" and app.dialogs == []


def test_a_delayed_offer_gets_our_offer_in_the_200_and_the_ack_brings_the_answer() -> None:
    uas, app, wire, clock = make_uas()
    uas.receive(request("INVITE"), PEER)  # no SDP
    [(_, ok)] = wire.responses(200, "INVITE")
    ours = ok.body.decode()
    assert "m=audio 20000 RTP/AVP 0 8 101" in ours
    answer = offer("m=audio 4000 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000")
    uas.receive(request("ACK", to_tag=str(ok.to_address.parameters["tag"]), body=answer), PEER)
    assert app.events == [("acked", answer)]
    n = sdp.accept_answer(sdp.parse(answer), ours)
    assert (n.encoding, n.payload_type, n.dtmf_payload_type, n.remote_port, n.direction) == ("PCMA", 8, 101, 4000,
                                                                                             "sendrecv")
    clock.advance(40.0)
    assert len(wire.responses(200, "INVITE")) == 1  # the ACK stopped the retransmissions
    with pytest.raises(sdp.NoCommonCodec):
        sdp.accept_answer(sdp.parse(offer("m=audio 0 RTP/AVP 0")), ours)


# ---------------------------------------------------------------- make run
def test_make_run_takes_sip_on_5060_or_a_free_port_and_leaves_a_users_settings_alone() -> None:
    import socket

    from voice_devstack.stack import sip_env, sip_port_free

    assert sip_env({"SIP_ENABLED": "false"}) == {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        assert not sip_port_free("127.0.0.1", port)
        env = sip_env({"SIP_UDP_PORT": str(port)})  # the user's port is kept as given
        assert env["SIP_UDP_PORT"] == env["SIP_TCP_PORT"] == str(port) and env["SIP_BIND_HOST"] == "127.0.0.1"
    env = sip_env({})
    assert env["SIP_ENABLED"] == "true" and env["SIP_UDP_PORT"] == env["SIP_TCP_PORT"]
    assert env["SIP_UDP_PORT"] == "5060" or not sip_port_free("127.0.0.1", 5060)


# ---------------------------------------------------------------- trunks, keys sent, the outbound proxy
def _trunk(**kw: object) -> Any:
    from voice_schemas.agent import SipTrunk

    return SipTrunk(**{"id": "t1", "tenant_id": "tenant-a", "name": "pbx", **kw})  # type: ignore[arg-type]


def test_trunk_number_rules_make_e164_and_refuse_what_they_cannot() -> None:
    from voice_ingress.sip_trunks import safe_pattern, trunk_number
    from voice_schemas.agent import TrunkNumberRule

    t = _trunk(number_rules=[TrunkNumberRule(match=r"0([1-9]\d{8,9})", replace=r"+44\1"),
                             TrunkNumberRule(match=r"(1\d\d)", replace=r"+4420700000\1"),
                             # refused when saved; one that got into KV some other way is still never run
                             TrunkNumberRule.model_construct(match=r"(a+)+b", replace=r"+1\1")])
    assert trunk_number(t, "02071234567") == "+442071234567"  # national, trunk prefix dropped
    assert trunk_number(t, "123") == "+4420700000123"  # an extension
    assert trunk_number(t, "+15550100") == "+15550100" and trunk_number(t, "0015550100") == "+15550100"
    assert trunk_number(t, "a" * 30 + "c") is None  # the nested pattern is never run
    assert trunk_number(t, "9" * 40) is None and trunk_number(t, "hello") is None and trunk_number(t, None) is None
    assert not safe_pattern(r"(a+)+b") and not safe_pattern(r"(\d{1,3})*") and safe_pattern(r"0(\d{9,10})")


def test_trunks_are_matched_by_source_then_credentials_with_the_allow_list_as_fallback() -> None:
    from voice_ingress.sip_trunks import TrunkDirectory

    d = TrunkDirectory([ipaddress.ip_network("198.51.100.0/24")])
    d.put(_trunk(id="wide", inbound_sources=["192.0.2.0/24"]))
    d.put(_trunk(id="narrow", inbound_sources=["192.0.2.7/32"], inbound_username="pbx",
                 inbound_password_secret="pw", digest_algorithms=["MD5"]))
    d.put(_trunk(id="roaming", inbound_username="mobile", inbound_password_secret="pw2"))
    assert d.classify("192.0.2.9", None).kind == "trunk" and d.classify("192.0.2.9", None).trunks[0].id == "wide"
    assert d.classify("192.0.2.7", None).trunks[0].id == "wide"  # a source trunk without credentials takes it
    c = d.classify("192.0.2.7", "pbx")
    assert c.kind == "verify" and [t.id for t in c.trunks] == ["narrow"]
    assert d.classify("203.0.113.1", "pbx").kind == "forbidden"  # pbx's trunk names other sources
    assert [t.id for t in d.classify("203.0.113.1", "mobile").trunks] == ["roaming"]
    assert d.classify("198.51.100.5", None).kind == "fallback"  # SIP_ALLOWED_SOURCES
    c = d.classify("203.0.113.1", None)
    assert c.kind == "challenge" and c.algorithms == ("SHA-256", "MD5")
    assert d.admits("203.0.113.1")  # the roaming trunk may call from anywhere, with credentials
    d.remove("roaming")
    assert not d.admits("203.0.113.1") and d.classify("203.0.113.1", None).kind == "forbidden"
    only = TrunkDirectory([], trunks_only=True)
    assert not only.admits("127.0.0.1") and TrunkDirectory([]).admits("127.0.0.1")


def test_keys_queue_behind_audio_and_survive_a_clear() -> None:
    q = rtp.PlayoutQueue(max_payloads=2)
    q.put(b"a")
    for tick in rtp.dtmf_ticks("5#"):
        q.put_key(tick if tick is not None else b"s")
    q.clear()  # a barge-in drops the agent's audio, not a key half pressed
    taken = [q.take()[0] for _ in range(17)]
    events = [t for t in taken if isinstance(t, rtp.DtmfTick)]
    assert len(events) == 10 and taken.count(b"s") == 6 and taken[-1] is None
    assert [e.payload()[0] for e in events] == [5] * 5 + [11] * 5
    end = events[4].payload()
    assert end[1] & 0x80 and int.from_bytes(end[2:4], "big") == 800 and not events[3].payload()[1] & 0x80


def test_outbound_proxy_addresses() -> None:
    from voice_ingress.transports.sip import _host_port, sip_uac_host

    assert _host_port("sip.example.com") == ("sip.example.com", 5060)
    assert _host_port("192.0.2.1:5080") == ("192.0.2.1", 5080)
    assert _host_port("[2001:db8::1]:5062") == ("2001:db8::1", 5062)
    for bad in ["", "host:x", "host:70000"]:
        with pytest.raises(ValueError):
            _host_port(bad)
    assert sip_uac_host("sip:alice@192.0.2.1:5062;transport=tcp") == "192.0.2.1:5062"


async def test_keys_go_in_band_when_no_telephone_event_was_negotiated() -> None:
    from voice_ingress import g711, tones
    from voice_ingress.transports.sip import SipCall

    n = sdp.negotiate(sdp.parse(offer("m=audio 4000 RTP/AVP 8")), address="198.51.100.1", port=20000)
    assert n.dtmf_payload_type is None
    d = Dialog(call_id="c", local_tag="l", remote_tag="r", peer=PEER, invite=None,  # type: ignore[arg-type]
               remote_target="sip:x@192.0.2.10", route_set=[], remote_cseq=1)
    call = SipCall(d, n, jitter_s=0.06, on_close=lambda *_: None)
    await call.send_dtmf("7*")
    frames = [call.queue.take()[0] for _ in range(16)]
    assert all(isinstance(f, bytes) and len(f) == 160 for f in frames) and call.queue.take()[0] is None
    pcm = g711.decode(b"".join(f for f in frames if isinstance(f, bytes)), "alaw")
    assert tones.detect(pcm, 8000) == "7*"
    with pytest.raises(tones.BadDigits):
        await call.send_dtmf("x")


def test_a_refer_of_ours_gets_its_final_response_and_the_notify_reaches_the_app() -> None:
    uas, app, wire, clock = make_uas(t1_s=0.5)
    tag = invite(uas, wire)
    uas.receive(request("ACK", to_tag=tag), PEER)
    d = uas.dialogs[("c1", tag)]
    finals: list[int | None] = []
    uas.in_dialog_request(d, "REFER", headers=[("Refer-To", "<sip:+15550111@192.0.2.10>")],
                          on_final=lambda r: finals.append(r.code if r is not None else None))
    [refer] = wire.requests("REFER")
    assert refer.headers["Refer-To"] == "<sip:+15550111@192.0.2.10>" and refer.cseq.sequence == 1
    assert refer.from_address.parameters["tag"] == tag and refer.to_address.parameters["tag"] == "caller"
    clock.advance(0.6)
    assert len(wire.requests("REFER")) == 2  # sent again over UDP until answered
    branch = refer.via[0].parameters["branch"]
    uas.receive((f"SIP/2.0 202 Accepted\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch={branch}\r\n"
                 f"From: {refer.headers['From']}\r\nTo: {refer.headers['To']}\r\nCall-ID: c1\r\n"
                 "CSeq: 1 REFER\r\nContent-Length: 0\r\n\r\n").encode(), PEER)
    clock.advance(40.0)
    assert finals == [202] and len(wire.requests("REFER")) == 2
    frag = "SIP/2.0 200 OK\r\n"
    uas.receive(request("NOTIFY", branch="z9hG4bK-n1", cseq=2, to_tag=tag, body=frag,
                        extra="Event: refer\r\nSubscription-State: terminated\r\n").replace(
                            b"application/sdp", b"message/sipfrag"), PEER)
    assert app.events[-1] == ("notify", frag) and wire.responses(200, "NOTIFY")


async def test_clear_says_how_many_agent_frames_it_dropped() -> None:
    from voice_ingress.transports.sip import SipCall

    n = sdp.negotiate(sdp.parse(offer("m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000")),
                      address="198.51.100.1", port=20000)
    d = Dialog(call_id="c", local_tag="l", remote_tag="r", peer=PEER, invite=None,  # type: ignore[arg-type]
               remote_target="sip:x@192.0.2.10", route_set=[], remote_cseq=1)
    call = SipCall(d, n, jitter_s=0.06, on_close=lambda *_: None)
    assert call.can_clear_queued  # what the RTP queue still holds is never sent: a pause may send it again
    for _ in range(4):
        await call.play(bytes(640))
    await call.mark("m")
    call.queue.take()  # one frame went out
    assert await call.clear() == 3 and call.queue.take() == (None, [])
