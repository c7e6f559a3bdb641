"""Outbound calls: the dialer interface, the ingress handler that places the calls control-api asks for, the
Twilio dialer and the answering-machine check.

control-api sends an ``events.DialRequest`` on ``subjects.ingress_rpc("dial", "place")`` (NATS request/reply, a
queue group: one replica takes it). ``DialHandler`` picks the dialer by ``channel``, creates the call (KV record,
``call.started``, exactly as for an inbound call but routed to the requested agent) and answers at once (accepted
or refused); the dial itself runs in the background and reports progress through ``report(call_id, status)``,
which publishes ``call.dial_status`` and, for busy / no_answer / failed / rejected, ends the call
(``call.ended`` with reason busy / no_answer / dial_failed).

- SIP (``SipEndpoint.dial``, the transport's side): returns when the INVITE is answered or refused; it calls
  ``on_status(call_id, "ringing")`` on 180/183. On "answered" it runs the call like an inbound one.
- Twilio (``TwilioDialer``): creates the call through Twilio's REST API with TwiML that connects a Media Stream
  back to this platform's ``/twilio/media`` carrying the call id, and a ``StatusCallback`` to ``/twilio/status``
  with the call id in its query; Twilio's status callbacks (any replica may get them) report ringing, answered,
  busy, no-answer and failed. The account is the tenant's own when it has the secrets ``twilio_account_sid`` and
  ``twilio_auth_token`` (``TwilioAccounts``), else the platform's (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN).

Who speaks first: an outbound call's ``call.answered`` says ``greet`` only when the agent speaks first and the
answering-machine check is off; otherwise the agent waits for the callee (a person says "hello?", and the agent
answers that as a turn).

The answering-machine check (``MachineCheck``, per call, from media's speech events): right after answering, a
first stretch of callee speech longer than ``machine_greeting_s`` (an uninterrupted speech segment that has not
stopped by then) is a machine's greeting; a shorter one, or silence for ``HUMAN_SILENCE_S``, is a person. For a
machine, ``hangup`` ends the call (reason ``machine``); ``message`` waits for the greeting to end (the beep), has
the agent say ``machine_message`` (default its first message) and hangs up once that has played.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from nats.js.errors import KeyNotFoundError
from pydantic import SecretStr, ValidationError
from twilio.twiml.voice_response import Connect, VoiceResponse
from voice_runtime.handlers import Message
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.secretbox import SecretBox, SecretError
from voice_schemas import AgentConfig, Envelope, events, make, subjects

from .twilio_rest import ACCOUNT_SID, TwilioRest, TwilioRestError, TwilioRestSettings

log = get_logger(__name__)

DialStatusName = Literal["ringing", "answered", "busy", "no_answer", "failed", "rejected"]
DIAL_QUEUE = "ingress-dial"
MAX_DIALS = 500  # outbound calls being placed at once on one replica (beyond: refused, control-api says 503)
HUMAN_SILENCE_S = 6.0  # no speech this long after answering: a person waiting for the agent
MACHINE_GREETING_LIMIT_S = 40.0  # a machine's greeting still going after this: leave the message anyway
_END_REASONS = {
    "busy": events.EndReason.busy,
    "no_answer": events.EndReason.no_answer,
    "failed": events.EndReason.dial_failed,
    "rejected": events.EndReason.dial_failed,
}


class OnStatus(Protocol):
    """What a dialer calls as the call progresses: ``await on_status(call_id, "ringing")``.

    Call it for "ringing" (180/183, Twilio's ringing callback). The final outcome is reported by the handler from the
    returned ``DialOutcome``, so a dialer need not call it for answered/busy/no_answer/failed.
    """

    async def __call__(self, call_id: str, status: DialStatusName, detail: str = "") -> None: ...


@dataclass
class DialOutcome:
    """How a dial ended. ``placed``: the provider took the call and reports its progress itself (Twilio's status
    callbacks); the handler then publishes nothing more for it."""

    status: Literal["answered", "busy", "no_answer", "failed", "rejected", "placed"]
    detail: str = ""


class Dialer(Protocol):
    async def dial(self, request: events.DialRequest) -> DialOutcome: ...


class OutboundDesk(Protocol):
    """What the handler needs of the ingress service (``IngressService``)."""

    bus: Any

    async def create_call(self, *, channel: events.Channel, to_number: str, from_number: str | None,
                          provider_call_id: str | None, agent_id: str | None = None, tenant_id: str | None = None,
                          call_id: str | None = None, direction: str = "inbound",
                          greet_on_answer: bool = True) -> str | None: ...

    async def end_call(self, call_id: str, reason: events.EndReason, detail: str | None = None) -> None: ...

    async def call_record(self, call_id: str) -> Any: ...

    async def bind_provider_id(self, call_id: str, provider_call_id: str) -> None: ...

    async def agent(self, agent_id: str) -> AgentConfig | None: ...

    async def on_events(self, subject: str, handler: Callable[[Envelope[Any]], Awaitable[None]], *,
                        per_call: bool = False) -> Any: ...


class DialHandler:
    """Takes DialRequests for this replica (queue group: one replica each) and reports their progress."""

    def __init__(self, desk: OutboundDesk, dialers: Mapping[str, Dialer | None]) -> None:
        self.desk = desk
        self.dialers = dict(dialers)
        self._sub: Any = None
        self._dials: dict[str, asyncio.Task[None]] = {}
        self._checks: dict[str, MachineCheck] = {}

    async def start(self) -> None:
        self._sub = await self.desk.bus.subscribe(subjects.ingress_rpc("dial", "place"), self._on_request,
                                                  queue=DIAL_QUEUE)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for t in list(self._dials.values()):
            t.cancel()
        for c in list(self._checks.values()):
            await c.stop()

    async def _reply(self, msg: Message, accepted: bool, detail: str = "") -> None:
        if msg.reply:
            await self.desk.bus.publish_nowait(
                msg.reply, events.DialReply(accepted=accepted, detail=detail[:300]).model_dump_json().encode())

    async def _on_request(self, msg: Message) -> None:
        try:
            request = events.DialRequest.model_validate_json(msg.data)
        except ValidationError:
            await self._reply(msg, False, "the dial request cannot be read")
            return
        dialer = self.dialers.get(request.channel)
        if dialer is None:
            why = {"twilio": "Twilio REST credentials are not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)",
                   "sip": "this ingress cannot place SIP calls"}.get(request.channel, "unknown channel")
            await self._reply(msg, False, why)
            return
        if len(self._dials) >= MAX_DIALS:
            await self._reply(msg, False, "too many outbound calls being placed")
            return
        refusal = getattr(dialer, "refusal", None)
        refused: str | None = await refusal(request) if refusal is not None else None
        if refused:
            await self._reply(msg, False, refused)
            return
        greet = request.agent_speaks_first and request.machine_detection == "off"
        call_id = await self.desk.create_call(
            channel=events.Channel(request.channel), to_number=request.to_number, from_number=request.from_number,
            provider_call_id=None, agent_id=request.agent_id, tenant_id=request.tenant_id, call_id=request.call_id,
            direction="outbound", greet_on_answer=greet,
        )
        if call_id is None:
            await self._reply(msg, False, "the agent is not available to calls")
            return
        await self._reply(msg, True)
        log.info("dial_started", call_id=call_id, tenant_id=request.tenant_id, channel=request.channel)
        task = asyncio.create_task(self._dial(dialer, request), name=f"dial:{call_id}")
        self._dials[call_id] = task
        task.add_done_callback(lambda _: self._dials.pop(call_id, None))

    async def _dial(self, dialer: Dialer, request: events.DialRequest) -> None:
        try:
            outcome = await dialer.dial(request)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("dial_failed", call_id=request.call_id, error=safe_error(e, 200))
            outcome = DialOutcome("failed", "the call could not be placed")
        if outcome.status != "placed":
            await self.report(request.call_id, outcome.status, outcome.detail)

    async def report(self, call_id: str, status: DialStatusName, detail: str = "") -> None:
        """An outbound call's progress: ``call.dial_status``; a call that did not connect ends here; an answered
        one starts its machine check when the agent has one."""
        record = await self.desk.call_record(call_id)
        if record is None:
            return  # over already
        await self.desk.bus.publish(make(events.CallDialStatus(status=status, detail=detail[:300]),
                                         tenant_id=record.tenant_id, call_id=call_id,
                                         event_id=f"{call_id}-dial-{status}"))
        log.info("dial_status", call_id=call_id, status=status)
        if status in _END_REASONS:
            await self.desk.end_call(call_id, _END_REASONS[status], detail or None)
        elif status == "answered":
            await self._check_machine(record)

    async def _check_machine(self, record: Any) -> None:
        agent = await self.desk.agent(record.agent_id)
        if agent is None or agent.outbound.machine_detection == "off" or record.call_id in self._checks:
            return
        if len(self._checks) >= MAX_DIALS:
            return
        check = MachineCheck(self.desk, record.call_id, record.tenant_id, agent,
                             on_done=lambda: self._checks.pop(record.call_id, None))
        self._checks[record.call_id] = check
        await check.start()


class MachineCheck:
    """Person or machine, from the first callee speech after answering (see the module docstring)."""

    def __init__(self, desk: OutboundDesk, call_id: str, tenant_id: str, agent: AgentConfig,
                 on_done: Callable[[], object]) -> None:
        self.desk, self.call_id, self.tenant_id, self.agent = desk, call_id, tenant_id, agent
        self.limit_s = agent.outbound.machine_greeting_s
        self._on_done = on_done
        self._subs: list[Any] = []
        self._timer: asyncio.Task[None] | None = None
        self.verdict: Literal["human", "machine"] | None = None
        self._waiting_for_beep = False
        self._epoch = 0
        self._done = False

    async def start(self) -> None:
        for cls in (events.SpeechStarted, events.SpeechStopped, events.BargeIn, events.CallEnded):
            self._subs.append(await self.desk.on_events(cls.subject_for(self.call_id), self._on_event, per_call=True))
        self._timer = asyncio.create_task(self._after(HUMAN_SILENCE_S, "human"), name=f"amd:{self.call_id}")

    async def stop(self) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._on_done()

    async def _after(self, delay_s: float, verdict: Literal["human", "machine"]) -> None:
        await asyncio.sleep(delay_s)
        self._timer = None
        await self._decide(verdict)

    def _restart_timer(self, delay_s: float, verdict: Literal["human", "machine"]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.create_task(self._after(delay_s, verdict), name=f"amd:{self.call_id}")

    async def _on_event(self, env: Envelope[Any]) -> None:
        data = env.data
        self._epoch = max(self._epoch, env.epoch)
        if isinstance(data, events.CallEnded):
            await self.stop()
        elif self.verdict is None and isinstance(data, events.SpeechStarted):
            self._restart_timer(self.limit_s, "machine")  # still speaking after limit_s: a machine's greeting
        elif self.verdict is None and isinstance(data, events.SpeechStopped):
            machine = data.speech_ms >= self.limit_s * 1000
            await self._decide("machine" if machine else "human", greeting_over=True)
        elif self._waiting_for_beep and isinstance(data, events.SpeechStopped):
            await self._leave_message()

    async def _decide(self, verdict: Literal["human", "machine"], *, greeting_over: bool = False) -> None:
        if self.verdict is not None or self._done:
            return
        self.verdict = verdict
        log.info("machine_check", call_id=self.call_id, verdict=verdict)
        if verdict == "human":
            await self.stop()
        elif self.agent.outbound.machine_detection == "hangup":
            await self._hang_up(turn_id=None)
            await self.stop()
        else:  # leave a message once the greeting ends (the beep), or once it has gone on far too long
            self._waiting_for_beep = True
            if greeting_over:
                await self._leave_message()
            else:
                self._timer = asyncio.create_task(self._leave_after(MACHINE_GREETING_LIMIT_S),
                                                  name=f"amd:{self.call_id}")

    async def _leave_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._timer = None
        await self._leave_message()

    async def _leave_message(self) -> None:
        if not self._waiting_for_beep or self._done:
            return
        self._waiting_for_beep = False
        text = (self.agent.outbound.machine_message or self.agent.first_message or "").strip()
        turn_id = "machine-message"
        if text:
            await self.desk.bus.publish(make(
                events.ReplyChunk(index=0, text=text, final=True, voice=self.agent.voice), tenant_id=self.tenant_id,
                call_id=self.call_id, turn_id=turn_id, epoch=self._epoch, event_id=f"{self.call_id}-machine-0"))
        await self._hang_up(turn_id=turn_id if text else None)
        await self.stop()

    async def _hang_up(self, turn_id: str | None) -> None:
        await self.desk.bus.publish(make(events.HangUp(reason=events.EndReason.machine, after_playout=True),
                                         tenant_id=self.tenant_id, call_id=self.call_id, turn_id=turn_id,
                                         event_id=f"{self.call_id}-machine-hangup"))


# ---------------------------------------------------------------- Twilio
def stream_twiml(stream_url: str, call_id: str) -> str:
    """``<Response><Connect><Stream url=...><Parameter name="call_id" .../></Stream></Connect></Response>``."""
    resp = VoiceResponse()
    connect = Connect()
    connect.stream(url=stream_url).parameter(name="call_id", value=call_id)
    resp.append(connect)
    return str(resp)


TWILIO_STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")


TENANT_ACCOUNT_SECRET, TENANT_TOKEN_SECRET = "twilio_account_sid", "twilio_auth_token"


class TwilioAccounts:
    """Which Twilio account a tenant's outbound calls go through: its own, when the tenant has both secrets
    ``twilio_account_sid`` and ``twilio_auth_token`` (and ingress holds SECRETS_KEY), else the platform's
    (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN). A tenant's own token also signs the status callbacks and media stream
    of the calls placed through its account: ``token_for_call`` gives it to the webhook checks."""

    def __init__(self, platform: TwilioRest | None, settings: TwilioRestSettings, box: SecretBox | None,
                 secrets: Callable[[], Any], records: Callable[[str], Awaitable[Any]]) -> None:
        self.platform, self.settings, self.box = platform, settings, box
        self._secrets, self._records = secrets, records

    async def _secret(self, tenant_id: str, name: str) -> str | None:
        bucket = self._secrets()
        if self.box is None or bucket is None:
            return None
        try:
            entry = await bucket.get(subjects.secret_key(tenant_id, name))
        except (KeyNotFoundError, subjects.InvalidSubjectToken):
            return None
        if not entry.value:
            return None
        try:
            return self.box.open(tenant_id, name, entry.value)
        except SecretError:
            log.warning("twilio_tenant_secret_unreadable", tenant_id=tenant_id, secret=name)
            return None

    async def tenant_credentials(self, tenant_id: str) -> tuple[str, SecretStr] | None:
        sid = await self._secret(tenant_id, TENANT_ACCOUNT_SECRET)
        token = await self._secret(tenant_id, TENANT_TOKEN_SECRET)
        if not sid or not token or not ACCOUNT_SID.fullmatch(sid):
            return None
        return sid, SecretStr(token)

    @contextlib.asynccontextmanager
    async def client(self, tenant_id: str) -> AsyncIterator[TwilioRest | None]:
        """The REST client for the tenant's calls (its own account's, closed after use; or the platform's)."""
        own = await self.tenant_credentials(tenant_id)
        if own is None:
            yield self.platform
            return
        rest = TwilioRest(own[0], own[1], base_url=self.settings.twilio_api_base_url,
                          timeout_s=self.settings.twilio_api_timeout_s)
        try:
            yield rest
        finally:
            await rest.close()

    async def token_for_call(self, call_id: str) -> str | None:
        """The auth token of the tenant's own account, for a call of a tenant that has one."""
        record = await self._records(call_id)
        if record is None:
            return None
        own = await self.tenant_credentials(record.tenant_id)
        return own[1].get_secret_value() if own else None


class TwilioDialer:
    """Places calls through Twilio's REST API (the tenant's account or the platform's); the call's progress comes
    from Twilio's status callbacks."""

    def __init__(self, accounts: TwilioAccounts, desk: OutboundDesk, *, stream_url: str, status_url: str) -> None:
        self.accounts, self.desk = accounts, desk
        self.stream_url, self.status_url = stream_url, status_url

    async def refusal(self, request: events.DialRequest) -> str | None:
        """Why the call cannot be placed at all (checked before the call is created), or None."""
        if self.accounts.platform is None and await self.accounts.tenant_credentials(request.tenant_id) is None:
            return ("no Twilio account: set the tenant's secrets twilio_account_sid and twilio_auth_token, or "
                    "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        return None

    async def dial(self, request: events.DialRequest) -> DialOutcome:
        if not request.from_number:
            return DialOutcome("failed", "no caller id to call from")
        async with self.accounts.client(request.tenant_id) as rest:
            if rest is None:
                return DialOutcome("failed", "no Twilio account: neither the tenant's secrets twilio_account_sid "
                                   "and twilio_auth_token nor TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are set")
            try:
                created = await rest.create_call(
                    to=request.to_number, from_=request.from_number,
                    twiml=stream_twiml(f"{self.stream_url}?call_id={request.call_id}", request.call_id),
                    status_callback=f"{self.status_url}?call_id={request.call_id}",
                    status_callback_events=TWILIO_STATUS_EVENTS,
                )
            except TwilioRestError as e:
                return DialOutcome("failed", f"Twilio did not place the call: {e}")
        sid = created.get("sid")
        if isinstance(sid, str):
            await self.desk.bind_provider_id(request.call_id, sid)
        return DialOutcome("placed")
