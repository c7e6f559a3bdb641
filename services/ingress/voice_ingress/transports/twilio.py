"""Twilio: the voice webhook (TwiML ``<Connect><Stream>``), the status callback and Media Streams over WebSocket.

Wire format (https://www.twilio.com/docs/voice/media-streams/websocket-messages): JSON text messages;
inbound ``connected``, ``start`` (with our ``call_id`` as a custom parameter), ``media`` (base64 μ-law 8 kHz),
``dtmf``, ``mark`` (an echo of ours, once the audio before it has played, or at once when cleared), ``stop``;
outbound ``media``, ``mark``, ``clear``. Every request and the WebSocket upgrade carry ``X-Twilio-Signature``.

DTMF: ``send_dtmf`` sends in-band tones (``tones.py``) as ``media``, since a Media Stream carries nothing else.

Transfers: ``TwilioMediaStream.transfer`` redirects the live call to ``<Dial>`` TwiML through Twilio's REST API
(``twilio_rest.py``, the call's ``callSid`` from the stream's ``start``, ``TWILIO_ACCOUNT_SID`` and the auth token).
Twilio then stops the media stream, and the session ends the call as ``transferred``.

Fail closed: with ``TWILIO_AUTH_TOKEN`` every signature is checked; without it every request is refused (403),
unless ``TWILIO_ALLOW_UNSIGNED=true`` says to accept unsigned requests (local development only; ``make run`` sets
it on an all-embedded stack). Webhook bodies are read up to ``max_webhook_body_bytes`` before the signature can be
checked; a larger one is refused (413) without reading the rest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response, WebSocket
from pydantic import Field
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from voice_runtime import metrics
from voice_runtime.logging import get_logger
from voice_schemas import events

from .. import tones
from ..codec import AgentAudioEncoder, CallerAudioDecoder
from ..twilio_rest import TwilioRest, TwilioRestError, TwilioRestSettings, dial_twiml
from .base import (
    DTMF_DIGITS,
    CallDesk,
    CallerAudio,
    CallerHungUp,
    DtmfPressed,
    Endpoint,
    Inbound,
    MarkPlayed,
    ProtocolError,
    Started,
    TransferRefused,
    Transport,
)

log = get_logger(__name__)
SVC = "ingress"
TERMINAL_STATUSES = {"completed", "busy", "no-answer", "failed", "canceled"}
# an outbound call's CallStatus -> its dial status (completed: ends as any call, by the terminal status above)
TWILIO_DIAL_STATUSES = {"ringing": "ringing", "in-progress": "answered", "answered": "answered", "busy": "busy",
                        "no-answer": "no_answer", "failed": "failed", "canceled": "failed"}
MEDIA_FORMAT = "audio/x-mulaw;rate=8000"


class TwilioStreamSettings(TwilioRestSettings):
    """Twilio settings of ingress: the webhook's public URL and auth token, whether unsigned requests are
    accepted, the webhook's and media stream's limits, and the REST API that carries out transfers."""

    twilio_allow_unsigned: bool = Field(
        False, description="Without TWILIO_AUTH_TOKEN, accept Twilio requests unsigned (local development only); "
        "otherwise they are refused (403). Ignored when a token is set",
    )
    max_webhook_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Larger webhook bodies are refused (413) before the signature is checked "
        "(Twilio's are a few KiB)",
    )
    max_ws_message_bytes: int = Field(16 * 1024, description="Larger Twilio messages are a protocol error")
    twilio_frames_per_message: int = Field(
        2, ge=1, le=5, description="20 ms agent frames per outbound media message: fewer, larger WebSocket "
        "messages (less CPU per call at both ends); the audio Twilio holds ahead grows by the extra frames, which "
        "a barge-in's clear drops",
    )


class BodyTooLarge(Exception):
    """A webhook body over ``max_webhook_body_bytes``."""


async def read_form(request: Request, limit: int) -> dict[str, str]:
    """The urlencoded form of a webhook, read incrementally (chunked bodies too) and never past ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def parse_message(raw: str | bytes, limit: int) -> dict[str, Any]:
    """Parse one Media Streams message; ``ProtocolError`` with a reason for anything malformed."""
    if len(raw) > limit:
        raise ProtocolError("message too large")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError("malformed JSON") from e
    except RecursionError as e:  # a few KiB of ``[[[[`` nest deeper than the parser recurses
        raise ProtocolError("JSON nested too deeply") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        raise ProtocolError("message has no event")
    return obj


async def text_messages(ws: WebSocket) -> AsyncIterator[str]:
    """The stream's messages until the far end disconnects. Media Streams sends text frames only: a binary frame
    is a protocol error."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            raise ProtocolError("binary frame")
        yield text


class TwilioMediaStream(Transport):
    """One Media Streams WebSocket: μ-law 8 kHz base64 in JSON ⇄ PCM16 16 kHz frames."""

    channel = events.Channel.twilio
    media_format = MEDIA_FORMAT
    can_clear_queued = True  # Twilio's clear drops the media it has buffered: what it had not played is never heard

    def __init__(self, ws: WebSocket, max_message_bytes: int, rest: TwilioRest | None = None,
                 frames_per_message: int = 1) -> None:
        self.ws = ws
        self.frames_per_message = frames_per_message
        self.limit = max_message_bytes
        self.rest = rest  # None: no REST credentials configured (transfers are refused)
        self.stream_id: str | None = None
        self.call_sid: str | None = None  # Twilio's CallSid, from ``start``
        self.account_sid: str | None = None
        self.started = False
        self.closed = False
        self.decoder = CallerAudioDecoder("ulaw")
        self.encoder = AgentAudioEncoder("ulaw")
        self._media_head: tuple[str | None, str] | None = None  # (stream id, the media message up to its payload)

    # ------------------------------------------------------------ inbound
    def decode(self, message: Any) -> list[Inbound]:
        msg = parse_message(message, self.limit)
        event = msg["event"]
        try:
            if event == "connected":
                return []
            if event == "start":
                return [self._start(msg)]
            if not self.started:
                raise ProtocolError(f"{event!r} before start")
            if event == "media":
                media = msg.get("media") or {}
                if media.get("track", "inbound") != "inbound":
                    return []
                ulaw = base64.b64decode(str(media["payload"]), validate=True)
                return [CallerAudio(tuple(self.decoder.decode(ulaw)))]
            if event == "dtmf":
                digit = str((msg.get("dtmf") or {}).get("digit", ""))
                if digit not in DTMF_DIGITS:
                    raise ProtocolError(f"invalid DTMF digit {digit[:8]!r}")
                return [DtmfPressed(digit)]
            if event == "mark":
                return [MarkPlayed(str((msg.get("mark") or {}).get("name", "")))]
            if event == "stop":
                return [CallerHungUp()]
        except ProtocolError:
            raise
        except (KeyError, TypeError, AttributeError, binascii.Error, ValueError, OverflowError) as e:
            raise ProtocolError(f"bad {event!r} message: {e!r}"[:200]) from e
        raise ProtocolError(f"unknown event {event!r}"[:200])

    def _start(self, msg: dict[str, Any]) -> Started:
        if self.started:
            raise ProtocolError("duplicate start")
        start = msg.get("start") or {}
        fmt = start.get("mediaFormat") or {}
        if fmt and (fmt.get("encoding") != "audio/x-mulaw" or int(fmt.get("sampleRate", 8000)) != 8000):
            raise ProtocolError("unsupported media format")
        params = start.get("customParameters") or {}
        self.started = True
        self.stream_id = str(start.get("streamSid") or msg.get("streamSid") or "")
        self.call_sid = str(start.get("callSid") or "") or None
        self.account_sid = str(start.get("accountSid") or "") or None
        return Started(call_id=str(params.get("call_id", "")), stream_id=self.stream_id)

    # ------------------------------------------------------------ outbound
    def _payloads(self, pcms: Sequence[bytes], end_of_reply: bool) -> list[bytes]:
        """μ-law payloads of the frames, with what the encoder holds back at the end of a reply."""
        payloads: list[bytes] = []
        for pcm in pcms:
            payloads += self.encoder.encode(pcm)
        if end_of_reply:
            payloads += self.encoder.flush()
        return payloads

    def encode_audio(self, pcm: bytes, *, end_of_reply: bool = False) -> list[Any]:
        return [self._media_message(p) for p in self._payloads((pcm,), end_of_reply)]

    async def play_frames(self, pcms: Sequence[bytes], *, end_of_reply: bool = False) -> None:
        """One ``media`` message for all of them (Twilio plays a payload of any length)."""
        payloads = self._payloads(pcms, end_of_reply)
        if payloads:
            await self.send(self._media_message(b"".join(payloads)))

    def _media_message(self, payload: bytes) -> str:
        """One outbound ``media`` message: the same JSON as ``json.dumps`` of the message would give, from a head
        built once per stream (50 messages a second per call; base64 needs no JSON escaping)."""
        cached = self._media_head
        if cached is None or cached[0] != self.stream_id:
            head = json.dumps({"event": "media", "streamSid": self.stream_id, "media": {"payload": ""}})[:-4]
            cached = self._media_head = (self.stream_id, head)
        return f'{cached[1]}"{base64.b64encode(payload).decode()}"}}}}'

    def encode_mark(self, name: str) -> list[Any]:
        return [json.dumps({"event": "mark", "streamSid": self.stream_id, "mark": {"name": name}})]

    def encode_clear(self) -> list[Any]:
        self.encoder.reset()
        return [json.dumps({"event": "clear", "streamSid": self.stream_id})]

    async def send(self, message: Any) -> None:
        await self.ws.send_text(message)

    async def transfer(self, target: str) -> None:
        """Redirect the call to ``<Dial>`` the target; Twilio then stops this media stream."""
        if self.rest is None:
            raise TransferRefused("Twilio REST credentials are not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)")
        if not self.call_sid:
            raise TransferRefused("the media stream did not name its Twilio call (no callSid in start)")
        if self.account_sid and self.account_sid != self.rest.account_sid:
            raise TransferRefused("the call belongs to another Twilio account than TWILIO_ACCOUNT_SID")
        try:
            twiml = dial_twiml(target)
        except ValueError as e:
            raise TransferRefused(str(e)) from None
        try:
            await self.rest.update_call(self.call_sid, twiml=twiml)
        except TwilioRestError as e:
            raise TransferRefused(f"Twilio did not take the transfer: {e}") from None

    def encode_dtmf(self, digits: str) -> list[Any]:
        """In-band DTMF as ``media`` (a Media Stream takes only media, mark and clear): the tones made at 8 kHz and
        μ-law encoded directly, after what the agent's encoder still holds back."""
        payloads = self.encoder.flush() + tones.g711_frames(digits, "ulaw")
        return [self._media_message(p) for p in payloads]

    async def send_dtmf(self, digits: str) -> None:
        """Queued at Twilio behind the audio sent so far, as any media: it plays them in order."""
        for m in self.encode_dtmf(digits):
            await self.send(m)

    async def close(self, reason: events.EndReason) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=1008 if reason == events.EndReason.protocol_error else 1000)


def _twiml(resp: VoiceResponse) -> Response:
    return Response(content=str(resp), media_type="application/xml")


class TwilioEndpoint(Endpoint):
    """``POST /twilio/voice`` (TwiML), ``POST /twilio/status``, ``WS /twilio/media``."""

    def __init__(self, desk: CallDesk, settings: TwilioStreamSettings) -> None:
        super().__init__(desk)
        self.settings = settings
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        self.validator = RequestValidator(token) if token else None
        self.allow_unsigned = self.validator is None and settings.twilio_allow_unsigned
        self.rest = TwilioRest.from_settings(settings)  # shared by every call's transfers and outbound calls
        # outbound calls' progress from their status callbacks (DialHandler.report; set by the service)
        self.on_dial_status: Callable[[str, Any], Awaitable[None]] | None = None
        # an outbound call's tenant's own auth token, when it has its own Twilio account (dialing.TwilioAccounts)
        self.call_token: Callable[[str], Awaitable[str | None]] | None = None

    async def start(self) -> None:
        if self.allow_unsigned:
            log.warning("twilio_signatures_not_checked",
                        detail="TWILIO_ALLOW_UNSIGNED=true and no TWILIO_AUTH_TOKEN: anyone can place calls")
        elif self.validator is None:
            log.warning("twilio_requests_refused",
                        detail="no TWILIO_AUTH_TOKEN: every Twilio webhook and media stream is refused (403)")
        if self.rest is None:
            log.info("twilio_transfers_off", detail="no TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN: transfers of "
                     "Twilio calls fail (call.transfer_failed)")

    async def stop(self) -> None:
        if self.rest is not None:
            await self.rest.close()

    def public_url(self, path: str) -> str:
        return self.settings.public_base_url.rstrip("/") + path

    def stream_url(self) -> str:
        base = self.settings.public_base_url.rstrip("/").split("://", 1)[-1]
        return f"wss://{base}/twilio/media"

    def signature_ok(self, url: str, params: dict[str, Any], signature: str | None) -> bool:
        if self.validator is None:
            return self.allow_unsigned
        return bool(signature) and bool(self.validator.validate(url, params, signature))

    async def _tenant_signed(self, call_id: str | None, url: str, params: dict[str, Any],
                             signature: str | None) -> bool:
        """Signed by the token of the tenant's own Twilio account, for an outbound call (``call_id`` in the URL)
        of a tenant that has one."""
        if not call_id or not signature or self.call_token is None:
            return False
        token = await self.call_token(call_id)
        return bool(token) and bool(RequestValidator(token).validate(url, params, signature))

    async def _signed_form(self, request: Request, path: str) -> dict[str, str] | Response:
        """The webhook's form, or the refusal to answer with (413 too large, 403 not signed)."""
        try:
            form = await read_form(request, self.settings.max_webhook_body_bytes)
        except BodyTooLarge:
            metrics.ERRORS.labels(SVC, "webhook_too_large").inc()
            return Response("request body too large", status_code=413)
        url = self.public_url(path) + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get("x-twilio-signature")
        if not self.signature_ok(url, form, signature) and not await self._tenant_signed(
                request.query_params.get("call_id"), url, form, signature):
            metrics.ERRORS.labels(SVC, "bad_signature").inc()
            return Response("invalid Twilio signature", status_code=403)
        return form

    def routes(self, app: FastAPI) -> None:
        @app.post("/twilio/voice")
        async def voice(request: Request) -> Response:
            form = await self._signed_form(request, "/twilio/voice")
            if isinstance(form, Response):
                return form
            return await self.answer(form)

        @app.post("/twilio/status")
        async def status(request: Request) -> Response:
            form = await self._signed_form(request, "/twilio/status")
            if isinstance(form, Response):
                return form
            call_id = request.query_params.get("call_id")
            if call_id and self.on_dial_status is not None:  # an outbound call we placed (the query is signed)
                status = TWILIO_DIAL_STATUSES.get(form.get("CallStatus", ""))
                if status is not None:
                    await self.on_dial_status(call_id, status)
                    return Response(status_code=204)
            if form.get("CallStatus") in TERMINAL_STATUSES:
                await self.desk.end_by_provider_id(form.get("CallSid", ""), events.EndReason.status_callback)
            return Response(status_code=204)

        @app.websocket("/twilio/media")
        async def media(ws: WebSocket) -> None:
            # an outbound call's stream URL carries its call id (dialing.TwilioDialer): signed with the query
            url = self.stream_url() + (f"?{ws.url.query}" if ws.url.query else "")
            signature = ws.headers.get("x-twilio-signature")
            if not self.signature_ok(url, {}, signature) and not await self._tenant_signed(
                    ws.query_params.get("call_id"), url, {}, signature):
                metrics.ERRORS.labels(SVC, "bad_signature").inc()
                await ws.close(code=1008)
                return
            await ws.accept()
            stream = TwilioMediaStream(ws, self.settings.max_ws_message_bytes, self.rest,
                                       self.settings.twilio_frames_per_message)
            await self.desk.serve(stream, text_messages(ws))

    async def answer(self, form: dict[str, str]) -> Response:
        to = form.get("To", "")
        call_id = await self.desk.create_call(channel=events.Channel.twilio, to_number=to,
                                              from_number=form.get("From"),
                                              provider_call_id=form.get("CallSid") or None)
        resp = VoiceResponse()
        if call_id is None:
            resp.say("Sorry, no agent is configured for this number. Goodbye.")
            resp.hangup()
            return _twiml(resp)
        connect = Connect()
        stream = connect.stream(url=self.stream_url())
        stream.parameter(name="call_id", value=call_id)
        resp.append(connect)
        return _twiml(resp)
