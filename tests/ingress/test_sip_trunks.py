"""Tenants' SIP trunks, inbound: matched by source address and/or digest credentials (SIPp's MD5 with right and
wrong credentials; SHA-256 from a small Python UAC since SIPp offers only MD5), number rules, a trunk never
reaching another tenant's number, a delayed offer. Ingress runs in process on the in-memory bus; trunks and their
sealed passwords are written to KV ``trunks`` / ``secrets`` the way control-api mirrors them."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sipmessage import Message, Response
from voice_ingress import sip_digest
from voice_runtime.secretbox import SecretBox
from voice_schemas import events, subjects
from voice_schemas.agent import SipTrunk, TrunkNumberRule

from .fakes import NUMBER, Ingress
from .test_sip import of, sip_settings, sipp

pytestmark = pytest.mark.integration

KEY = base64.b64encode(os.urandom(32)).decode()
RULE = TrunkNumberRule(match=r"(555\d{4})", replace=r"+1\1")  # the PBX sends national numbers: 5550100


async def add_trunk(ingress: Ingress, trunk: SipTrunk, password: str | None = None) -> None:
    if password is not None and trunk.inbound_password_secret:
        box = SecretBox(base64.b64decode(KEY))
        await ingress.bus.kv["secrets"].put(subjects.secret_key(trunk.tenant_id, trunk.inbound_password_secret),
                                            box.seal(trunk.tenant_id, trunk.inbound_password_secret, password))
    await ingress.bus.kv["trunks"].put(subjects.trunk_key(trunk.id), trunk.model_dump_json().encode())
    await ingress.service.sip.trunks.refresh()


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    async with Ingress.running(**sip_settings(sip_trunks_only=True, secrets_key=KEY)) as i:
        yield i


def digest_trunk(**extra: Any) -> SipTrunk:
    return SipTrunk(**{"id": "tr1", "tenant_id": "tenant-a", "name": "pbx", "inbound_username": "pbx",
                       "inbound_password_secret": "pbx-pw", "number_rules": [RULE], **extra})


async def test_sipp_md5_digest_right_credentials_call_and_wrong_ones_get_403(ingress: Ingress) -> None:
    await add_trunk(ingress, digest_trunk(digest_algorithms=["MD5"]), password="s3cret")
    rc, errors = await sipp(ingress, "-au", "pbx", "-ap", "s3cret", "-s", "5550100", scenario="uac_auth.xml")
    assert rc == 0, errors
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    [started] = of(ingress, events.CallStarted)
    assert started.tenant_id == "tenant-a" and started.data.to_number == NUMBER  # the rule made it E.164
    rc, _ = await sipp(ingress, "-au", "pbx", "-ap", "guess", "-s", "5550100", scenario="uac_auth.xml")
    assert rc != 0 and len(of(ingress, events.CallStarted)) == 1  # 403: no second call


async def test_a_trunk_listing_md5_first_gets_it_challenged_first(ingress: Ingress) -> None:
    # SIPp answers only the first challenge and knows only MD5: the trunk's order puts MD5 first
    await add_trunk(ingress, digest_trunk(digest_algorithms=["MD5", "SHA-256"]), password="s3cret")
    rc, errors = await sipp(ingress, "-au", "pbx", "-ap", "s3cret", "-s", "5550100", scenario="uac_auth.xml")
    assert rc == 0, errors
    assert len(of(ingress, events.CallStarted)) == 1


class MiniUac:
    """Just enough of a UAC over UDP to authenticate an INVITE with our own digest client (SHA-256)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.local = self.sock.getsockname()[1]
        self.uri = f"sip:5550100@127.0.0.1:{port}"

    def invite(self, cseq: int, branch: str, auth: str = "") -> bytes:
        body = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                "m=audio 40000 RTP/AVP 0\r\n")
        return (f"INVITE {self.uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.local};branch={branch};rport\r\n"
                "From: <sip:+15550199@127.0.0.1>;tag=mini\r\nTo: <sip:5550100@127.0.0.1>\r\nCall-ID: mini-1\r\n"
                f"CSeq: {cseq} INVITE\r\nContact: <sip:mini@127.0.0.1:{self.local}>\r\nMax-Forwards: 70\r\n"
                f"{auth}Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

    def ack(self, resp: Response, cseq: int, branch: str) -> bytes:
        return (f"ACK {self.uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.local};branch={branch};rport\r\n"
                f"From: <sip:+15550199@127.0.0.1>;tag=mini\r\nTo: {resp.headers['To']}\r\nCall-ID: mini-1\r\n"
                f"CSeq: {cseq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()

    async def final(self, data: bytes) -> Response:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, ("127.0.0.1", self.port))
        while True:
            msg = Message.parse(await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5))
            if isinstance(msg, Response) and msg.code >= 200:
                return msg

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("127.0.0.1", self.port))


async def test_sha256_digest_from_our_own_client(ingress: Ingress) -> None:
    await add_trunk(ingress, digest_trunk(digest_algorithms=["SHA-256"]), password="s3cret")
    uac = MiniUac(ingress.service.sip.udp_port)
    try:
        challenge = await uac.final(uac.invite(1, "z9hG4bK-m1"))
        assert challenge.code == 401
        await uac.send(uac.ack(challenge, 1, "z9hG4bK-m1"))
        picked = sip_digest.pick_challenge(challenge.headers.getlist("WWW-Authenticate"))
        assert picked is not None and picked.algorithm == "SHA-256"
        header = sip_digest.Credentials("pbx", "s3cret").authorization(picked, method="INVITE", uri=uac.uri)
        ok = await uac.final(uac.invite(2, "z9hG4bK-m2", f"Authorization: {header}\r\n"))
        assert ok.code == 200
        await uac.send(uac.ack(ok, 2, "z9hG4bK-m2"))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)))
        assert of(ingress, events.CallStarted)[0].tenant_id == "tenant-a"
        # the same response replayed in a new INVITE (a new transaction) is refused
        replay = await uac.final(uac.invite(3, "z9hG4bK-m3", f"Authorization: {header}\r\n").replace(
            b"Call-ID: mini-1", b"Call-ID: mini-2"))
        assert replay.code == 403
    finally:
        uac.sock.close()


async def test_a_source_trunk_needs_no_credentials_but_never_reaches_another_tenants_number(
        ingress: Ingress) -> None:
    other = SipTrunk(id="tr2", tenant_id="tenant-b", name="b", inbound_sources=["127.0.0.0/8"],
                     number_rules=[RULE])
    await add_trunk(ingress, other)
    rc, _ = await sipp(ingress, "-sn", "uac", "-s", "5550100")  # the number is tenant-a's: 404
    assert rc != 0 and of(ingress, events.CallStarted) == []
    await ingress.bus.kv["trunks"].delete(subjects.trunk_key("tr2"))
    await add_trunk(ingress, other.model_copy(update={"id": "tr3", "tenant_id": "tenant-a"}))
    rc, errors = await sipp(ingress, "-sn", "uac", "-s", "5550100")
    assert rc == 0, errors
    [started] = of(ingress, events.CallStarted)
    assert started.tenant_id == "tenant-a" and started.data.to_number == NUMBER


async def test_no_trunk_for_the_source_is_403_and_no_dialog(ingress: Ingress) -> None:
    await add_trunk(ingress, SipTrunk(id="tr4", tenant_id="tenant-a", name="far", inbound_sources=["192.0.2.0/24"]))
    rc, _ = await sipp(ingress, "-sn", "uac")
    assert rc != 0 and of(ingress, events.CallStarted) == []
    assert ingress.service.sip.uas.refused >= 1 and not ingress.service.sip.uas.dialogs


async def test_a_delayed_offer_is_answered_with_our_offer_and_the_ack_brings_the_answer() -> None:
    async with Ingress.running(**sip_settings()) as ingress:
        rc, errors = await sipp(ingress, scenario="delayed_offer.xml")
        assert rc == 0, errors
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
        [answered] = of(ingress, events.CallAnswered)
        assert answered.data.media_format == "audio/PCMA;rate=8000"  # the answer in the ACK chose A-law
        assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.caller_hangup
