"""The ingress service: accepts callers on every transport's endpoint and runs one ``CallSession`` per call.

Transport-neutral: creating a call (routing, KV record, ``CallStarted``), driving a connection to the end of
its call, and ending calls a provider reports over. Each protocol's routes and wire format live in
``transports/`` (``transports/base.py`` says how to add one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi import FastAPI
from nats.js.errors import KeyNotFoundError
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.service import Service
from voice_schemas import AgentConfig, CallRecord, events, make, subjects
from voice_schemas.agent import NumberRoute
from voice_schemas.streams import KV_CALLS, KV_REPLICAS

from .dialing import DialHandler, TwilioAccounts, TwilioDialer
from .liveness import CallReaper
from .session import CallSession, Clock, LoopClock
from .settings import IngressSettings
from .transports.base import Endpoint, ProtocolError, Started, Transport
from .transports.chat import ChatEndpoint
from .transports.sip import SipEndpoint
from .transports.twilio import TwilioEndpoint
from .transports.webrtc import WebRtcEndpoint

log = get_logger(__name__)


class IngressService(Service):
    name = "ingress"

    def __init__(self, settings: IngressSettings) -> None:
        super().__init__(settings)
        self.settings: IngressSettings = settings
        self.sessions: dict[str, CallSession] = {}
        self.directory: AgentDirectory | None = None
        self.endpoints: list[Endpoint] = [TwilioEndpoint(self, settings), ChatEndpoint(self, settings, settings)]
        self.endpoints.append(WebRtcEndpoint(self, settings, settings.call_token_key_bytes()))
        self.sip = SipEndpoint(self, settings)
        self.endpoints.append(self.sip)
        twilio = self.endpoints[0]
        assert isinstance(twilio, TwilioEndpoint)
        # outbound calls (POST /v1/calls): Twilio through the platform's account, SIP through the tenant's trunk
        accounts = TwilioAccounts(twilio.rest, settings, settings.secret_box(), lambda: self.kv.get("secrets"),
                                  self._record)
        twilio_dialer = TwilioDialer(accounts, self, stream_url=twilio.stream_url(),
                                     status_url=twilio.public_url("/twilio/status"))
        twilio.call_token = accounts.token_for_call  # the tenant's own token signs its calls' webhooks
        self.dialing = DialHandler(self, {"twilio": twilio_dialer, "sip": self.sip})
        twilio.on_dial_status = self.dialing.report
        self.sip.on_status = self.dialing.report
        self.clock: Clock = LoopClock()  # what playout is paced by
        self.replica_id = subjects.new_id()  # named in the records of the calls whose connection this replica holds
        self.reaper: CallReaper | None = None
        self._leaving = asyncio.Event()

    async def on_start(self) -> None:
        assert self.bus is not None
        self.directory = AgentDirectory(self.kv["agents"], self.kv["numbers"], self.settings)
        self.reaper = CallReaper(self.replica_id, self.kv[KV_REPLICAS.bucket], self.kv[KV_CALLS.bucket],
                                 self.bus.publish)
        await self.reaper.liveness.beat()  # alive before the first call binds to this replica
        self.spawn(self.reaper.liveness.run(self._leaving), name="ingress-liveness")
        for e in self.endpoints:
            await e.start()
        await self.dialing.start()

    async def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.dialing.stop()
        for e in self.endpoints:
            with contextlib.suppress(Exception):
                await e.stop()
        for s in list(self.sessions.values()):
            await s.end(events.EndReason.shutdown)
        self._leaving.set()
        if self.reaper is not None:
            await self.reaper.liveness.leave()

    def routes(self, app: FastAPI) -> None:
        for e in self.endpoints:
            e.routes(app)

    # ------------------------------------------------------------ calls (the CallDesk of the endpoints)
    async def create_call(self, *, channel: events.Channel, to_number: str, from_number: str | None,
                          provider_call_id: str | None, agent_id: str | None = None,
                          tenant_id: str | None = None, call_id: str | None = None, direction: str = "inbound",
                          greet_on_answer: bool = True) -> str | None:
        """Create a call routed by the number called, or, for a call granted to one agent (a browser call or a
        chat, ``agent_id`` and ``tenant_id`` from a verified call token), to that agent. None: no such active
        agent (or it belongs to another tenant)."""
        assert self.directory is not None and self.bus is not None
        if agent_id is not None:
            agent = await self.directory.current(agent_id)
            if agent is None or not agent.is_active or agent.tenant_id != tenant_id:
                log.info("call_rejected_no_agent", agent_id=agent_id, channel=channel.value)
                return None
            route = NumberRoute(number=to_number or "", tenant_id=agent.tenant_id, agent_id=agent.id)
        else:
            routed = await self.directory.route(to_number) if to_number else None
            agent = await self.directory.current(routed.agent_id) if routed else None
            if routed is None or agent is None or not agent.is_active:
                log.info("call_rejected_no_agent", number=to_number)
                return None
            if tenant_id is not None and routed.tenant_id != tenant_id:
                # a tenant's SIP trunk reaches only that tenant's numbers
                log.warning("call_rejected_other_tenant", tenant_id=tenant_id, channel=channel.value)
                return None
            route = routed
        call_id = call_id or subjects.new_call_id()  # an outbound call's id is control-api's
        try:
            pkey = subjects.provider_key(provider_call_id) if provider_call_id else None
        except subjects.InvalidSubjectToken:
            pkey = None
        record = CallRecord(call_id=call_id, tenant_id=route.tenant_id, agent_id=agent.id,
                            agent_version=agent.version, channel=channel.value, started_at_ms=time.time() * 1000,
                            provider_call_id=provider_call_id if pkey else None,
                            # this replica until a connection binds elsewhere (_open): a chat stays here
                            ingress_replica=self.replica_id, direction="outbound" if direction == "outbound"
                            else "inbound", greet_on_answer=greet_on_answer)
        kv = self.kv[KV_CALLS.bucket]
        await kv.put(subjects.call_key(call_id), record.model_dump_json().encode())
        if pkey:
            await kv.put(pkey, call_id.encode())
        await self.bus.publish(make(
            events.CallStarted(agent_id=agent.id, agent_version=agent.version, channel=channel,
                               from_number=from_number, to_number=to_number or None,
                               provider_call_id=provider_call_id),
            tenant_id=route.tenant_id, call_id=call_id, event_id=f"{call_id}-started",
        ))
        log.info("call_created", call_id=call_id, tenant_id=route.tenant_id, agent_id=agent.id,
                 channel=channel.value)
        return call_id

    async def end_by_provider_id(self, provider_call_id: str, reason: events.EndReason) -> None:
        assert self.bus is not None
        kv = self.kv[KV_CALLS.bucket]
        try:
            entry = await kv.get(subjects.provider_key(provider_call_id))
        except (KeyNotFoundError, subjects.InvalidSubjectToken):
            return
        await self.end_call((entry.value or b"").decode(), reason)

    async def end_call(self, call_id: str, reason: events.EndReason, detail: str | None = None) -> None:
        """End the call wherever it is: its session here, or, when another replica (or none: an outbound call not
        connected yet) holds it, by announcing ``call.ended``."""
        assert self.bus is not None
        session = self.sessions.get(call_id)
        if session is not None:
            await session.end(reason, detail)
            return
        record = await self._record(call_id)
        if record is None:
            return  # already ended
        # the caller's connection may live on another replica: the CallEnded event reaches it
        await self.bus.publish(make(events.CallEnded(reason=reason, detail=detail), tenant_id=record.tenant_id,
                                    call_id=call_id, event_id=f"{call_id}-ended"))
        await self._forget(record)

    async def serve(self, transport: Transport, inbound: AsyncIterable[Any]) -> None:
        """Drive one caller connection until its call ends. The connection must bind to a call (``Started``)
        within ``start_timeout_s``; a protocol error ends only this call, with the reason. Cancelled (the server
        is stopping), it ends the call with ``shutdown`` before it lets the cancellation through."""
        session: CallSession | None = None
        reason, detail = events.EndReason.connection_lost, None  # the messages simply stopped
        messages = aiter(inbound)
        try:
            while session is None or not session.ended:
                try:
                    if session is None:  # not bound to a call yet: it must start in time
                        message = await self._next_within(messages, self.settings.start_timeout_s)
                    else:
                        message = await anext(messages)
                except StopAsyncIteration:
                    break
                for event in transport.decode(message):
                    if isinstance(event, Started):
                        if session is not None:
                            raise ProtocolError("duplicate start")
                        session = await self._open(event, transport)
                    elif session is None:
                        raise ProtocolError(f"{type(event).__name__} before start")
                    else:
                        await session.handle(event)
        except ProtocolError as e:
            reason, detail = events.EndReason.protocol_error, str(e)[:200]
            metrics.ERRORS.labels(self.name, "protocol_error").inc()
            log.warning("transport_protocol_error", channel=transport.channel.value, error=detail,
                        call_id=session.call_id if session else None)
        except Exception as e:
            reason, detail = events.EndReason.error, safe_error(e, 200)
            metrics.ERRORS.labels(self.name, "stream_error").inc()
            log.error("transport_error", channel=transport.channel.value, error=detail,
                      call_id=session.call_id if session else None)
        except asyncio.CancelledError:
            await self._finish(session, transport, events.EndReason.shutdown, None)
            raise
        await self._finish(session, transport, reason, detail)

    @staticmethod
    async def _finish(session: CallSession | None, transport: Transport, reason: events.EndReason,
                      detail: str | None) -> None:
        if session is not None:
            await session.end(reason, detail)
        else:
            await transport.close(reason)

    @staticmethod
    async def _next_within(messages: AsyncIterator[Any], timeout_s: float) -> Any:
        try:
            return await asyncio.wait_for(anext(messages), timeout_s)
        except TimeoutError as e:
            raise ProtocolError("no start message") from e

    async def _open(self, started: Started, transport: Transport) -> CallSession:
        assert self.bus is not None
        record = await self._record(started.call_id) if started.call_id else None
        if record is None or started.call_id in self.sessions:
            raise ProtocolError("unknown or already connected call_id")
        # this replica holds the connection now: if it dies, the others end the call (liveness.py)
        record = record.model_copy(update={"ingress_replica": self.replica_id})
        await self.kv[KV_CALLS.bucket].put(subjects.call_key(record.call_id), record.model_dump_json().encode())
        session = CallSession(record, transport, bus=self.bus, subscriber=self,
                              lead_ms=self.settings.playout_lead_ms, gap_ms=self.settings.playout_gap_ms,
                              on_closed=self._closed, clock=self.clock,
                              caller_frames=lambda: self.settings.caller_frames_for(len(self.sessions)))
        # registered while it opens, so that a shutdown or a provider's end reaches it; every way out of
        # open() that is not success ends it (end() frees what open() set up, and what it still sets up)
        self.sessions[record.call_id] = session
        try:
            await session.open()
        except asyncio.CancelledError:
            await session.end(events.EndReason.shutdown, "cancelled while the call was opening")
            raise
        except Exception as e:
            await session.end(events.EndReason.error, f"the call could not be opened: {e!r}"[:200])
            raise
        log.info("media_stream_started", call_id=record.call_id, tenant_id=record.tenant_id,
                 channel=transport.channel.value)
        return session

    async def _closed(self, session: CallSession) -> None:
        self.sessions.pop(session.call_id, None)
        await self._forget(session.record)

    async def _forget(self, record: CallRecord) -> None:
        """The call is over: its KV entries go (they also expire with the bucket's TTL)."""
        kv = self.kv[KV_CALLS.bucket]
        keys = [subjects.call_key(record.call_id)]
        if record.provider_call_id:
            keys.append(subjects.provider_key(record.provider_call_id))
        for key in keys:
            with contextlib.suppress(Exception):
                await kv.delete(key)

    async def call_record(self, call_id: str) -> CallRecord | None:
        return await self._record(call_id)

    async def bind_provider_id(self, call_id: str, provider_call_id: str) -> None:
        """An outbound call's provider id (Twilio's CallSid), once the provider names it: its status callbacks and
        media stream find the call by it."""
        record = await self._record(call_id)
        try:
            pkey = subjects.provider_key(provider_call_id)
        except subjects.InvalidSubjectToken:
            return
        if record is None:
            return
        # the key alone (it expires with the bucket's TTL): the record is the connection's to write (_open)
        await self.kv[KV_CALLS.bucket].put(pkey, call_id.encode())

    async def agent(self, agent_id: str) -> AgentConfig | None:
        assert self.directory is not None
        return await self.directory.current(agent_id)

    async def _record(self, call_id: str) -> CallRecord | None:
        kv = self.kv[KV_CALLS.bucket]
        try:
            entry = await kv.get(subjects.call_key(call_id))
        except (KeyNotFoundError, subjects.InvalidSubjectToken):
            return None
        return CallRecord.model_validate_json(entry.value) if entry.value else None
