"""Outbound SIP and in-call SIP requests: our UAC calling SIPp as the callee (``-sn uas``, and a callee behind a
trunk that challenges with 401), REFER for transfers (SIPp taking the REFER and NOTIFYing the outcome), and
RFC 4733 keys sent to a Python RTP peer that decodes them. Ingress runs in process on the in-memory bus."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from voice_ingress import rtp
from voice_ingress.transports.sip import SipCall
from voice_runtime.secretbox import SecretBox
from voice_schemas import events, make, subjects
from voice_schemas.agent import AgentConfig, SipTrunk

from ..conftest import free_port
from .fakes import NUMBER, Ingress
from .test_sip import SCENARIOS, RtpPeer, of, sip_settings, sipp, sipp_installed

pytestmark = pytest.mark.integration

KEY = base64.b64encode(os.urandom(32)).decode()


class Callee:
    """SIPp listening as the callee of one call (``-sn uas`` or a UAS scenario)."""

    def __init__(self, *args: str, scenario: str | None = None, keys: dict[str, str] | None = None,
                 tcp: bool = False) -> None:
        self.port = free_port()
        self.args, self.scenario, self.keys, self.tcp = args, scenario, keys or {}, tcp
        self.proc: asyncio.subprocess.Process | None = None
        self.work = Path(tempfile.mkdtemp(prefix="sipp-uas-"))

    async def __aenter__(self) -> Callee:
        if not sipp_installed():
            pytest.fail("SIPp is not installed: `make sip` installs Debian's sip-tester")
        cmd = ["sipp", "-i", "127.0.0.1", "-p", str(self.port), "-mp", str(free_port()), "-m", "1", "-nostdin",
               "-timeout", "30s", "-timeout_error", "-trace_err", "-error_file", str(self.work / "errors.log"),
               "-t", "t1" if self.tcp else "u1"]
        cmd += ["-sf", str(SCENARIOS / self.scenario)] if self.scenario else ["-sn", "uas"]
        for k, v in self.keys.items():
            cmd += ["-key", k, v]
        self.proc = await asyncio.create_subprocess_exec(*cmd, *self.args, stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.DEVNULL, cwd=self.work)
        await asyncio.sleep(0.3)  # SIPp binds its socket
        return self

    async def done(self) -> tuple[int, str]:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), 40)
        err = self.work / "errors.log"
        return rc, err.read_text(errors="replace")[-3000:] if err.exists() else ""

    async def __aexit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    async with Ingress.running(**sip_settings(secrets_key=KEY, egress_allow="127.0.0.1:5060")) as i:
        yield i


async def outbound_trunk(ingress: Ingress, port: int, password: str | None = None, **extra: Any) -> SipTrunk:
    trunk = SipTrunk(id="out1", tenant_id="tenant-a", name="carrier", outbound_proxy=f"127.0.0.1:{port}",
                     outbound_username="pbx" if password else None,
                     outbound_password_secret="carrier-pw" if password else None, **extra)
    if password:
        box = SecretBox(base64.b64decode(KEY))
        await ingress.bus.kv["secrets"].put(subjects.secret_key("tenant-a", "carrier-pw"),
                                            box.seal("tenant-a", "carrier-pw", password))
    await ingress.bus.kv["trunks"].put(subjects.trunk_key(trunk.id), trunk.model_dump_json().encode())
    await ingress.service.sip.trunks.refresh()
    ingress.service.sip.egress = ingress.service.sip.egress.parse([f"127.0.0.1:{port}"])
    return trunk


async def dial_request(ingress: Ingress, trunk: SipTrunk) -> events.DialRequest:
    # the dial handler records the call before it dials (here: the way an inbound call is recorded)
    call_id = await ingress.service.create_call(channel=events.Channel.sip, to_number=NUMBER,
                                                from_number="+15550199", provider_call_id=None)
    assert call_id is not None
    return events.DialRequest(call_id=call_id, tenant_id="tenant-a", agent_id="x", to_number="+15550123",
                              from_number="+15550199", channel="sip", trunk_id=trunk.id)


async def hang_up(ingress: Ingress, call_id: str) -> None:
    await ingress.bus.publish(make(events.HangUp(after_playout=False), tenant_id="tenant-a", call_id=call_id))


async def test_an_outbound_call_to_sipp_rings_is_answered_and_ends_with_our_bye(ingress: Ingress) -> None:
    async with Callee() as callee:
        trunk = await outbound_trunk(ingress, callee.port)
        # through the dial handler, as control-api asks for it (it records the call, then dials)
        agent = AgentConfig(id="out-agent", tenant_id="tenant-a").model_dump_json().encode()
        await ingress.bus.kv["agents"].put(subjects.agent_key("out-agent"), agent)
        await ingress.bus.kv["agents"].put(subjects.agent_version_key("out-agent", 1), agent)
        request = events.DialRequest(call_id=subjects.new_call_id(), tenant_id="tenant-a",
                                     agent_id="out-agent", to_number="+15550123",
                                     from_number="+15550199", channel="sip", trunk_id=trunk.id)
        raw = await ingress.bus.request(subjects.ingress_rpc("dial", "place"), request.model_dump_json().encode(),
                                        timeout=5)
        reply = events.DialReply.model_validate_json(raw)
        assert reply.accepted, reply.detail
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)))
        transport = ingress.service.sessions[request.call_id].transport
        assert isinstance(transport, SipCall) and transport.negotiated.encoding == "PCMU"
        await hang_up(ingress, request.call_id)
        rc, errors = await callee.done()
        assert rc == 0, errors  # SIPp's uas got the ACK, then our BYE, and answered it
    assert [e.data.status for e in of(ingress, events.CallDialStatus)] == ["ringing", "answered"]
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.agent_hangup
    other = request.model_copy(update={"call_id": subjects.new_call_id(), "tenant_id": "tenant-b"})
    raw = await ingress.bus.request(subjects.ingress_rpc("dial", "place"), other.model_dump_json().encode(),
                                    timeout=5)
    refused = events.DialReply.model_validate_json(raw)
    assert not refused.accepted and "trunk" in refused.detail  # another tenant's trunk: refused, no call made


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_an_outbound_call_answers_the_trunks_digest_challenge(ingress: Ingress, tcp: bool) -> None:
    async with Callee(scenario="uas_auth.xml", keys={"pw": "s3cret"}, tcp=tcp) as callee:
        trunk = await outbound_trunk(ingress, callee.port, password="s3cret",
                                     outbound_transport="tcp" if tcp else "udp")
        request = await dial_request(ingress, trunk)
        outcome = await ingress.service.sip.dial(request)
        assert outcome.status == "answered", outcome.detail
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)))
        assert of(ingress, events.CallAnswered)[0].data.media_format == "audio/PCMA;rate=8000"
        await hang_up(ingress, request.call_id)
        rc, errors = await callee.done()
        assert rc == 0, errors


async def test_wrong_outbound_credentials_are_rejected_and_nothing_is_left(ingress: Ingress) -> None:
    async with Callee(scenario="uas_auth.xml", keys={"pw": "other"}) as callee:
        trunk = await outbound_trunk(ingress, callee.port, password="s3cret")
        outcome = await ingress.service.sip.dial(await dial_request(ingress, trunk))
        assert outcome.status == "rejected" and outcome.detail.startswith("403")
        rc, errors = await callee.done()
        assert rc == 0, errors  # SIPp got the ACK of its 403
    assert ingress.service.sip.live_calls == 0 and not ingress.service.sip.uas.dialogs


async def test_dialing_refuses_another_tenants_trunk_and_internal_proxies(ingress: Ingress) -> None:
    trunk = await outbound_trunk(ingress, 5999)
    request = await dial_request(ingress, trunk)
    other = request.model_copy(update={"tenant_id": "tenant-b"})
    assert (await ingress.service.sip.dial(other)).status == "failed"
    ingress.service.sip.egress = ingress.service.sip.egress.parse([])  # 127.0.0.1 no longer allow-listed
    outcome = await ingress.service.sip.dial(request)
    assert outcome.status == "failed" and "internal address" in outcome.detail


async def test_no_answer_is_cancelled_after_the_dial_timeout() -> None:
    settings = sip_settings(secrets_key=KEY, sip_dial_timeout_s=5)
    async with Ingress.running(**settings) as ingress, Callee(scenario="uas_ring.xml") as callee:
        trunk = await outbound_trunk(ingress, callee.port)
        outcome = await ingress.service.sip.dial(await dial_request(ingress, trunk))
        assert outcome.status == "no_answer", outcome.detail
        rc, errors = await callee.done()
        assert rc == 0, errors  # SIPp got our CANCEL, answered 200 and 487, and got the ACK


# ---------------------------------------------------------------- REFER
async def refer_call(ingress: Ingress, frag: str) -> tuple[asyncio.Task[tuple[int, str]], str]:
    task = asyncio.create_task(sipp(ingress, scenario="refer.xml", keys={"frag": frag}))
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)) or task.done(), timeout=20)
    assert not task.done(), task.result()
    call_id = of(ingress, events.CallAnswered)[0].call_id
    await ingress.bus.publish(make(events.Transfer(target="+15550111"), tenant_id="tenant-a", call_id=call_id))
    return task, call_id


async def test_a_transfer_sends_refer_and_ends_with_bye_once_notified(ingress: Ingress) -> None:
    task, _ = await refer_call(ingress, "200 OK")
    rc, errors = await task
    assert rc == 0, errors  # the REFER named the target; after the NOTIFY's 200 our BYE came
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallEnded)))
    assert of(ingress, events.CallEnded)[0].data.reason == events.EndReason.transferred
    assert of(ingress, events.TransferFailed) == []


async def test_a_failed_transfer_reports_transfer_failed_and_the_call_goes_on(ingress: Ingress) -> None:
    task, call_id = await refer_call(ingress, "486 Busy Here")
    await ingress.bus.wait_for(lambda: bool(of(ingress, events.TransferFailed)), timeout=10)
    assert "486" in of(ingress, events.TransferFailed)[0].data.reason
    assert of(ingress, events.CallEnded) == []
    await hang_up(ingress, call_id)
    rc, errors = await task
    assert rc == 0, errors


async def test_a_trunk_without_refer_refuses_the_transfer(ingress: Ingress) -> None:
    call = SipCall.__new__(SipCall)
    call.trunk = SipTrunk(id="t", tenant_id="tenant-a", name="n", supports_refer=False)
    from voice_ingress.transports.base import TransferRefused

    with pytest.raises(TransferRefused, match="REFER"):
        await call.transfer("+15550111")


# ---------------------------------------------------------------- RFC 4733 keys sent
async def test_keys_are_sent_as_rfc4733_events_on_the_negotiated_payload_type(ingress: Ingress) -> None:
    async with RtpPeer() as peer:
        task = asyncio.create_task(sipp(ingress, scenario="agent_audio.xml", keys={"rtp_port": str(peer.port)},
                                        hold_ms=2500))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)), timeout=20)
        call_id = of(ingress, events.CallAnswered)[0].call_id
        await ingress.bus.publish(make(events.SendDtmf(digits="1#", after_playout=False), tenant_id="tenant-a",
                                       call_id=call_id))
        await ingress.bus.wait_for(lambda: sum(1 for p, _ in peer.received if p.payload_type == 101) >= 14,
                                   timeout=10)
        rc, errors = await task
        assert rc == 0, errors
    packets = [p for p, _ in peer.received]
    keys = [p for p in packets if p.payload_type == 101]
    receiver = rtp.DtmfReceiver()
    digits = [d for p in keys for d in receiver.push(p.timestamp, p.payload)]
    assert digits == ["1", "#"]
    by_event = {ts: [p for p in keys if p.timestamp == ts] for ts in dict.fromkeys(p.timestamp for p in keys)}
    assert len(by_event) == 2
    for group in by_event.values():
        ends = [p for p in group if p.payload[1] & 0x80]
        assert len(ends) == 3 and len(group) == 5 + 2  # 100 ms: 5 ticks, the last (End) sent 3 times
        assert group[0].marker and not any(p.marker for p in group[1:])
        durations = [int.from_bytes(p.payload[2:4], "big") for p in group]
        assert durations == [160, 320, 480, 640, 800, 800, 800]
    seq = [p.seq for p in packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seq))  # one stream, nothing skipped
    # the media clock goes on underneath: the second key starts 160 ms (8 ticks) after the first
    first, second = list(by_event)
    assert (second - first) % 2**32 == 8 * 160


async def test_our_uac_answers_a_sha256_challenge_of_our_own_uas(ingress: Ingress) -> None:
    """SIPp only does MD5: SHA-256 end to end is our UAC (this ingress dialling) against our UAS (another one)."""
    async with Ingress.running(**sip_settings(secrets_key=KEY, sip_trunks_only=True)) as callee:
        inbound = SipTrunk(id="in1", tenant_id="tenant-a", name="from-a", inbound_username="pbx",
                           inbound_password_secret="carrier-pw", digest_algorithms=["SHA-256"])
        box = SecretBox(base64.b64decode(KEY))
        await callee.bus.kv["secrets"].put(subjects.secret_key("tenant-a", "carrier-pw"),
                                           box.seal("tenant-a", "carrier-pw", "s3cret"))
        await callee.bus.kv["trunks"].put(subjects.trunk_key("in1"), inbound.model_dump_json().encode())
        await callee.service.sip.trunks.refresh()
        trunk = await outbound_trunk(ingress, callee.service.sip.udp_port, password="s3cret")
        request = (await dial_request(ingress, trunk)).model_copy(update={"to_number": NUMBER})
        outcome = await ingress.service.sip.dial(request)
        assert outcome.status == "answered", outcome.detail
        await callee.bus.wait_for(lambda: bool(of(callee, events.CallAnswered)))
        await ingress.bus.wait_for(lambda: bool(of(ingress, events.CallAnswered)))
        assert of(callee, events.CallStarted)[0].tenant_id == "tenant-a"
        await hang_up(ingress, request.call_id)  # our BYE ends the callee's call too
        await callee.bus.wait_for(lambda: bool(of(callee, events.CallEnded)))
        assert of(callee, events.CallEnded)[0].data.reason == events.EndReason.caller_hangup
