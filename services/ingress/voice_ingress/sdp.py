"""SDP offer/answer for SIP calls (RFC 4566 text, RFC 3264 negotiation), audio G.711 only.

The answer has the offer's m-lines in the offer's order (RFC 3264 §6): the first audio section over RTP/AVP that
offers PCMU or PCMA is accepted, every other section is rejected with port 0. The codec is the offerer's first
choice of the two (static payload types 0 and 8, or a dynamic type whose rtpmap names them at 8000 Hz);
``telephone-event/8000`` is answered on the offerer's payload type. The direction mirrors the offer's
(sendonly → recvonly, recvonly → sendonly, inactive → inactive): a ``sendonly`` hold answered ``sendrecv`` makes
some carriers hang up. An old-style hold (``c=0.0.0.0``) is treated as ``sendonly``.

A small parser of its own: only the lines negotiation needs are read, the rest is kept but ignored. Bounded input
(``MAX_SDP_BYTES``, ``MAX_MEDIA``): an offer is a few hundred bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

MAX_SDP_BYTES = 8 * 1024
MAX_MEDIA = 8
Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")
MIRROR: dict[Direction, Direction] = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
                                      "inactive": "inactive"}
STATIC = {"0": ("PCMU", 8000), "8": ("PCMA", 8000)}
LAWS = {"PCMU": "ulaw", "PCMA": "alaw"}
DTMF_EVENTS = "0-16"


class SdpError(ValueError):
    """The body is not an SDP we can read (a 400)."""


class NoCommonCodec(ValueError):
    """Nothing offered that we can take (a 488 Not Acceptable Here)."""


@dataclass(slots=True)
class Media:
    kind: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    rtpmap: dict[str, tuple[str, int]] = field(default_factory=dict)  # payload type -> (encoding, clock rate)
    direction: Direction | None = None
    ptime: int | None = None


@dataclass(slots=True)
class Offer:
    connection: str | None  # session-level c= address
    direction: Direction | None  # session-level direction attribute
    media: list[Media]
    origin_session: str = "0"


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What an accepted offer settles: where to send, which codec, DTMF, direction, and the answer's text."""

    remote_host: str  # "0.0.0.0" on an old-style hold
    remote_port: int
    payload_type: int
    encoding: str  # PCMU | PCMA
    dtmf_payload_type: int | None
    direction: Direction  # ours, as answered
    sdp: str

    @property
    def law(self) -> Literal["ulaw", "alaw"]:
        return "ulaw" if self.encoding == "PCMU" else "alaw"

    @property
    def we_send(self) -> bool:
        return self.direction in ("sendrecv", "sendonly") and self.remote_host not in ("0.0.0.0", "::")

    @property
    def we_receive(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")


def parse(body: bytes | str) -> Offer:
    """An SDP body -> its session connection, direction and media sections; ``SdpError`` when unreadable."""
    if len(body) > MAX_SDP_BYTES:
        raise SdpError("SDP too large")
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    offer = Offer(connection=None, direction=None, media=[])
    current: Media | None = None
    seen_version = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError("SDP line is not <type>=<value>")
        kind, value = line[0], line[2:]
        if kind == "v":
            seen_version = True
        elif kind == "o":
            parts = value.split()
            if len(parts) >= 2:
                offer.origin_session = parts[1][:32]
        elif kind == "c":
            address = _connection(value)
            if current is None:
                offer.connection = address
            else:
                current.connection = address
        elif kind == "m":
            if len(offer.media) >= MAX_MEDIA:
                raise SdpError("too many media sections")
            parts = value.split()
            if len(parts) < 3:
                raise SdpError("bad m= line")
            try:
                port = int(parts[1].split("/", 1)[0])
            except ValueError:
                raise SdpError("bad m= port") from None
            if not 0 <= port <= 65535:
                raise SdpError("bad m= port")
            current = Media(kind=parts[0], port=port, proto=parts[2], formats=parts[3:][:32])
            offer.media.append(current)
        elif kind == "a":
            name, _, attr = value.partition(":")
            if name in DIRECTIONS:
                if current is None:
                    offer.direction = name
                else:
                    current.direction = name
            elif current is not None and name == "rtpmap":
                pt, _, spec = attr.partition(" ")
                enc = spec.strip().split("/")
                if pt and len(enc) >= 2 and enc[1].isdigit() and len(current.rtpmap) < 32:
                    current.rtpmap[pt] = (enc[0], int(enc[1]))
            elif current is not None and name == "ptime" and attr.strip().isdigit():
                current.ptime = int(attr.strip())
    if not seen_version:
        raise SdpError("SDP has no v= line")
    return offer


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError("bad c= line")
    address = parts[2].split("/", 1)[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SdpError("c= address is not an IP address") from None
    return address


def _encoding(media: Media, pt: str) -> tuple[str, int] | None:
    if not pt.isdigit() or int(pt) > 127:
        return None
    if pt in media.rtpmap:
        name, rate = media.rtpmap[pt]
        return name.upper(), rate
    return STATIC.get(pt)


def negotiate(offer: Offer, *, address: str, port: int, session_version: int = 1,
              session_id: str = "1") -> Negotiated:
    """Answer ``offer`` with our media at ``address``:``port``; ``NoCommonCodec`` when no section can be taken."""
    chosen: tuple[Media, str, str, str | None] | None = None  # media, payload type, encoding, dtmf payload type
    for m in offer.media:
        if chosen is not None or m.kind != "audio" or m.port == 0 or m.proto.upper() != "RTP/AVP":
            continue
        codec = next(((pt, enc[0]) for pt in m.formats if (enc := _encoding(m, pt)) is not None
                      and enc[0] in LAWS and enc[1] == 8000), None)
        if codec is None:
            continue
        dtmf = next((pt for pt in m.formats if (enc := _encoding(m, pt)) is not None
                     and enc[0] == "TELEPHONE-EVENT" and enc[1] == 8000), None)
        chosen = (m, codec[0], codec[1], dtmf)
    if chosen is None:
        raise NoCommonCodec("no audio section offers PCMU or PCMA at 8000 Hz over RTP/AVP")
    media, pt, encoding, dtmf = chosen
    remote = media.connection or offer.connection
    if remote is None:
        raise SdpError("no c= line for the audio section")
    offered: Direction = media.direction or offer.direction or "sendrecv"
    if remote in ("0.0.0.0", "::") and offered == "sendrecv":
        offered = "sendonly"  # RFC 2543 hold
    direction = MIRROR[offered]
    family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    lines = ["v=0", f"o=- {session_id} {session_version} IN {family} {address}", "s=-",
             f"c=IN {family} {address}", "t=0 0"]
    for m in offer.media:
        if m is not media:
            lines.append(f"m={m.kind} 0 {m.proto} {' '.join(m.formats) or '0'}")
            continue
        formats = [pt] + ([dtmf] if dtmf else [])
        lines.append(f"m=audio {port} RTP/AVP {' '.join(formats)}")
        lines.append(f"a=rtpmap:{pt} {encoding}/8000")
        if dtmf:
            lines.append(f"a=rtpmap:{dtmf} telephone-event/8000")
            lines.append(f"a=fmtp:{dtmf} {DTMF_EVENTS}")
        lines.append("a=ptime:20")
        lines.append(f"a={direction}")
    return Negotiated(remote_host=remote, remote_port=media.port, payload_type=int(pt), encoding=encoding,
                      dtmf_payload_type=int(dtmf) if dtmf else None, direction=direction,
                      sdp="\r\n".join(lines) + "\r\n")


# ---------------------------------------------------------------- when we offer (delayed offer, outbound calls)
OFFER_DTMF_PT = 101


def make_offer(*, address: str, port: int, session_id: str = "1", session_version: int = 1,
               direction: Direction = "sendrecv") -> str:
    """Our offer: one audio section with PCMU, PCMA (in that order of preference) and telephone-event."""
    family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    lines = ["v=0", f"o=- {session_id} {session_version} IN {family} {address}", "s=-", f"c=IN {family} {address}",
             "t=0 0", f"m=audio {port} RTP/AVP 0 8 {OFFER_DTMF_PT}", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
             f"a=rtpmap:{OFFER_DTMF_PT} telephone-event/8000", f"a=fmtp:{OFFER_DTMF_PT} {DTMF_EVENTS}", "a=ptime:20",
             f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def accept_answer(answer: Offer, our_offer: str) -> Negotiated:
    """The answer to ``our_offer`` (``make_offer``'s text) -> what it settles; ``NoCommonCodec`` when the answer
    takes none of our codecs, ``SdpError`` when it names no address."""
    for m in answer.media:
        if m.kind != "audio" or m.port == 0 or m.proto.upper() != "RTP/AVP":
            continue
        codec = next(((pt, enc[0]) for pt in m.formats if (enc := _encoding(m, pt)) is not None
                      and enc[0] in LAWS and enc[1] == 8000), None)
        if codec is None:
            continue
        dtmf = next((pt for pt in m.formats if (enc := _encoding(m, pt)) is not None
                     and enc[0] == "TELEPHONE-EVENT" and enc[1] == 8000), None)
        remote = m.connection or answer.connection
        if remote is None:
            raise SdpError("no c= line for the audio section")
        theirs: Direction = m.direction or answer.direction or "sendrecv"
        if remote in ("0.0.0.0", "::") and theirs == "sendrecv":
            theirs = "sendonly"
        return Negotiated(remote_host=remote, remote_port=m.port, payload_type=int(codec[0]), encoding=codec[1],
                          dtmf_payload_type=int(dtmf) if dtmf else None, direction=MIRROR[theirs], sdp=our_offer)
    raise NoCommonCodec("the answer accepts no audio section with PCMU or PCMA")


def placeholder(our_offer: str) -> Negotiated:
    """Before the answer arrives: nothing is sent (no address yet), μ-law assumed."""
    return Negotiated(remote_host="0.0.0.0", remote_port=0, payload_type=0, encoding="PCMU",
                      dtmf_payload_type=OFFER_DTMF_PT, direction="sendrecv", sdp=our_offer)
