"""The ingress service: Twilio webhook (TwiML), status callback and Media Streams WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from nats.js.errors import KeyNotFoundError
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from voice_runtime import metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.logging import get_logger
from voice_runtime.service import Service
from voice_schemas import CallRecord, events, make, subjects
from voice_schemas.streams import KV_CALLS

from .session import CallSession, parse_twilio
from .settings import IngressSettings

log = get_logger(__name__)
TERMINAL_STATUSES = {"completed", "busy", "no-answer", "failed", "canceled"}


def _twiml(resp: VoiceResponse) -> Response:
    return Response(content=str(resp), media_type="application/xml")


class IngressService(Service):
    name = "ingress"

    def __init__(self, settings: IngressSettings) -> None:
        super().__init__(settings)
        self.settings: IngressSettings = settings
        self.sessions: dict[str, CallSession] = {}
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        self.validator = RequestValidator(token) if token else None
        self.directory: AgentDirectory | None = None

    async def on_start(self) -> None:
        self.directory = AgentDirectory(self.kv["agents"], self.kv["numbers"], self.settings)

    async def on_stop(self) -> None:
        for s in list(self.sessions.values()):
            await s.end(events.EndReason.shutdown)

    # ------------------------------------------------------------ helpers
    def public_url(self, path: str) -> str:
        return self.settings.public_base_url.rstrip("/") + path

    def stream_url(self) -> str:
        base = self.settings.public_base_url.rstrip("/").split("://", 1)[-1]
        return f"wss://{base}/twilio/media"

    def signature_ok(self, url: str, params: dict[str, Any], signature: str | None) -> bool:
        if self.validator is None:
            return True
        return bool(signature) and bool(self.validator.validate(url, params, signature))

    async def _calls_kv(self) -> Any:
        return self.kv[KV_CALLS.bucket]

    # ------------------------------------------------------------ routes
    def routes(self, app: FastAPI) -> None:
        @app.post("/twilio/voice")
        async def voice(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            url = self.public_url("/twilio/voice") + (f"?{request.url.query}" if request.url.query else "")
            if not self.signature_ok(url, form, request.headers.get("x-twilio-signature")):
                metrics.ERRORS.labels(self.name, "bad_signature").inc()
                return Response("invalid Twilio signature", status_code=403)
            return await self.answer(form)

        @app.post("/twilio/status")
        async def status(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            url = self.public_url("/twilio/status") + (f"?{request.url.query}" if request.url.query else "")
            if not self.signature_ok(url, form, request.headers.get("x-twilio-signature")):
                metrics.ERRORS.labels(self.name, "bad_signature").inc()
                return Response("invalid Twilio signature", status_code=403)
            if form.get("CallStatus") in TERMINAL_STATUSES:
                await self.end_by_provider_sid(form.get("CallSid", ""))
            return Response(status_code=204)

        @app.websocket("/twilio/media")
        async def media(ws: WebSocket) -> None:
            if not self.signature_ok(self.stream_url(), {}, ws.headers.get("x-twilio-signature")):
                metrics.ERRORS.labels(self.name, "bad_signature").inc()
                await ws.close(code=1008)
                return
            await ws.accept()
            await self.serve_stream(ws)

    async def answer(self, form: dict[str, str]) -> Response:
        assert self.directory is not None and self.bus is not None
        to = form.get("To", "")
        route = await self.directory.route(to) if to else None
        agent = await self.directory.current(route.agent_id) if route else None
        if route is None or agent is None or not agent.is_active:
            resp = VoiceResponse()
            resp.say("Sorry, no agent is configured for this number. Goodbye.")
            resp.hangup()
            log.info("call_rejected_no_agent", number=to)
            return _twiml(resp)
        call_id = subjects.new_call_id()
        sid = form.get("CallSid", "")
        try:
            provider_key: str | None = "p." + subjects.check_id(sid, "CallSid")
        except subjects.InvalidSubjectToken:
            provider_key = None
        record = CallRecord(call_id=call_id, tenant_id=route.tenant_id, agent_id=agent.id,
                            agent_version=agent.version, channel="twilio", started_at_ms=time.time() * 1000,
                            provider_call_id=sid if provider_key else None)
        kv = await self._calls_kv()
        await kv.put(subjects.call_key(call_id), record.model_dump_json().encode())
        if provider_key:
            await kv.put(provider_key, call_id.encode())
        await self.bus.publish(make(
            events.CallStarted(agent_id=agent.id, agent_version=agent.version, channel=events.Channel.twilio,
                               from_number=form.get("From"), to_number=to, provider_call_id=sid or None),
            tenant_id=route.tenant_id, call_id=call_id, event_id=f"{call_id}-started",
        ))
        log.info("call_created", call_id=call_id, tenant_id=route.tenant_id, agent_id=agent.id)
        resp = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url=self.stream_url())
        stream.parameter(name="call_id", value=call_id)
        resp.append(connect)
        return _twiml(resp)

    async def end_by_provider_sid(self, sid: str) -> None:
        assert self.bus is not None
        kv = await self._calls_kv()
        try:
            entry = await kv.get("p." + subjects.check_id(sid, "CallSid"))
        except (KeyNotFoundError, subjects.InvalidSubjectToken):
            return
        call_id = (entry.value or b"").decode()
        session = self.sessions.get(call_id)
        if session is not None:
            await session.end(events.EndReason.status_callback)
            return
        record = await self._record(call_id)
        if record is None:
            return  # already ended
        # the media stream may live on another replica: the CallEnded event reaches it
        await self.bus.publish(make(events.CallEnded(reason=events.EndReason.status_callback),
                                    tenant_id=record.tenant_id, call_id=call_id, event_id=f"{call_id}-ended"))
        await self._forget(record)

    async def _forget(self, record: CallRecord) -> None:
        """The call is over: its KV entries go (they also expire with the bucket's TTL)."""
        kv = await self._calls_kv()
        keys = [subjects.call_key(record.call_id)]
        if record.provider_call_id:
            keys.append("p." + record.provider_call_id)
        for key in keys:
            with contextlib.suppress(Exception):
                await kv.delete(key)

    async def _record(self, call_id: str) -> CallRecord | None:
        kv = await self._calls_kv()
        try:
            entry = await kv.get(subjects.call_key(call_id))
        except (KeyNotFoundError, subjects.InvalidSubjectToken):
            return None
        return CallRecord.model_validate_json(entry.value) if entry.value else None

    # ------------------------------------------------------------ media stream
    async def serve_stream(self, ws: WebSocket) -> None:
        assert self.bus is not None
        limit = self.settings.max_ws_message_bytes
        session: CallSession | None = None
        reason, detail = events.EndReason.caller_hangup, None

        async def send(obj: dict[str, Any]) -> None:
            await ws.send_json(obj)

        async def closed(s: CallSession) -> None:
            self.sessions.pop(s.call_id, None)
            await self._forget(s.record)
            with contextlib.suppress(Exception):
                await ws.close()

        try:
            while True:
                timeout = self.settings.start_timeout_s if session is None else None
                raw = await asyncio.wait_for(ws.receive_text(), timeout)
                try:
                    msg = parse_twilio(raw, limit)
                    event = msg["event"]
                    if event == "connected":
                        continue
                    if event == "start":
                        if session is not None:
                            raise ValueError("duplicate start")
                        session = await self._start(msg, send, closed)
                        continue
                    if session is None:
                        raise ValueError(f"{event!r} before start")
                    if event == "media":
                        media = msg.get("media") or {}
                        if media.get("track", "inbound") != "inbound":
                            continue
                        await session.on_media(str(media["payload"]))
                    elif event == "dtmf":
                        await session.on_dtmf(str((msg.get("dtmf") or {}).get("digit", "")))
                    elif event == "mark":
                        await session.on_mark(str((msg.get("mark") or {}).get("name", "")))
                    elif event == "stop":
                        reason = events.EndReason.caller_hangup
                        break
                    else:
                        raise ValueError(f"unknown event {event!r}")
                except (ValueError, KeyError, TypeError) as e:
                    reason, detail = events.EndReason.protocol_error, str(e)[:200]
                    metrics.ERRORS.labels(self.name, "protocol_error").inc()
                    log.warning("twilio_protocol_error", error=detail,
                                call_id=session.call_id if session else None)
                    break
        except WebSocketDisconnect:
            reason = events.EndReason.connection_lost
        except TimeoutError:
            reason, detail = events.EndReason.protocol_error, "no start message"
        except Exception as e:
            reason, detail = events.EndReason.error, repr(e)[:200]
            metrics.ERRORS.labels(self.name, "stream_error").inc()
            log.error("twilio_stream_error", error=detail)
        if session is not None:
            await session.end(reason, detail)
        else:
            with contextlib.suppress(Exception):
                await ws.close(code=1008 if reason == events.EndReason.protocol_error else 1000)

    async def _start(self, msg: dict[str, Any], send: Any, closed: Any) -> CallSession:
        assert self.bus is not None
        start = msg.get("start") or {}
        params = start.get("customParameters") or {}
        call_id = str(params.get("call_id", ""))
        record = await self._record(call_id) if call_id else None
        if record is None or call_id in self.sessions:
            raise ValueError("unknown or already connected call_id")
        fmt = start.get("mediaFormat") or {}
        if fmt and (fmt.get("encoding") != "audio/x-mulaw" or int(fmt.get("sampleRate", 8000)) != 8000):
            raise ValueError("unsupported media format")
        stream_sid = str(start.get("streamSid") or msg.get("streamSid") or "")
        session = CallSession(self.bus, record, stream_sid, send, self.settings.playout_lead_ms, closed)
        self.sessions[call_id] = session
        await session.open()
        log.info("media_stream_started", call_id=call_id, tenant_id=record.tenant_id)
        return session
