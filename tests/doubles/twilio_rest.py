"""A Twilio REST API test double: a real HTTP server on loopback speaking Twilio's Calls resource (2010-04-01).

What it checks as Twilio does: HTTP Basic auth ``AccountSid:AuthToken`` (401 with Twilio's error body otherwise),
the account in the path being the authenticated one, form-encoded bodies, the parameters an update or a create
needs, TwiML that parses, and that only a live call can be redirected. Errors are Twilio's JSON error bodies
(``{"code", "message", "more_info", "status"}``); call resources have Twilio's fields (``sid``, ``status``, ``to``,
``from``, ``direction``, ``uri`` ...).

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``: update a call (``Twiml``, ``Url`` or
  ``Status=completed|canceled``); 404 (error 20404) for a call it does not know: register live calls with
  ``add_call``.
- ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``: create an outbound call (``To``, ``From``, ``Url`` or
  ``Twiml``, optional ``StatusCallback``); 201 with a new ``CA...`` sid, status ``queued``.
- ``GET`` of a call: its resource.
- ``call_back``: what Twilio sends a created call's ``StatusCallback`` (ringing, in-progress, busy, ...), signed.

Every request is recorded (``requests``) for assertions, whether it was answered with success or not.
``fail_next`` scripts error answers; ``on_update`` / ``on_create`` are awaited (in the server's event loop, the
test's own) before the answer, e.g. to stop a media stream as Twilio does once a call is redirected; a hook that
returns a ``Fault`` makes that the answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from ..conftest import free_port

API = "/2010-04-01"
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_UPDATE_STATUSES = {"completed", "canceled"}
_ENDED = {"completed", "canceled", "failed", "busy", "no-answer"}


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class Recorded:
    """One request as the double received it."""

    method: str
    path: str
    account_sid: str | None  # from the path
    call_sid: str | None  # from the path (updates and fetches)
    form: dict[str, list[str]]
    auth: tuple[str, str] | None  # the Basic credentials sent
    status: int  # what the double answered

    def param(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


@dataclass
class Fault:
    status: int
    code: int
    message: str


Hook = Callable[[Recorded], Awaitable[Fault | None]]


@dataclass
class TwilioRestDouble:
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # sid -> call resource
    requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # the next requests' answers, one each
    on_update: Hook | None = None
    on_create: Hook | None = None
    port: int = 0
    status_callbacks: dict[str, str] = field(default_factory=dict)  # sid -> StatusCallback of a created call

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ scripting
    def add_call(self, sid: str | None = None, *, to: str = "+15550100", from_: str = "+15550199",
                 status: str = "in-progress", direction: str = "inbound") -> dict[str, Any]:
        """A call Twilio knows (e.g. the inbound call a media stream belongs to)."""
        sid = sid or new_sid("CA")
        self.calls[sid] = self._resource(sid, to=to, from_=from_, status=status, direction=direction)
        return self.calls[sid]

    def fail_next(self, status: int, code: int | None = None, message: str | None = None, times: int = 1) -> None:
        code = code or {400: 21201, 404: 20404, 429: 20429, 500: 20500, 503: 20503}.get(status, 20001)
        message = message or {500: "An internal server error has occurred",
                              503: "Service Unavailable"}.get(status, "Request failed")
        self.faults += [Fault(status, code, message)] * times

    def updates(self, call_sid: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.call_sid and r.method == "POST"
                and (call_sid is None or r.call_sid == call_sid)]

    def creates(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.call_sid is None]

    # ------------------------------------------------------------ Twilio's shapes
    def _resource(self, sid: str, *, to: str, from_: str, status: str, direction: str) -> dict[str, Any]:
        now = formatdate(usegmt=True)
        uri = f"{API}/Accounts/{self.account_sid}/Calls/{sid}.json"
        return {
            "sid": sid, "account_sid": self.account_sid, "api_version": "2010-04-01", "annotation": None,
            "answered_by": None, "caller_name": None, "date_created": now, "date_updated": now,
            "direction": direction, "duration": None, "end_time": None, "forwarded_from": None, "from": from_,
            "from_formatted": from_, "group_sid": None, "parent_call_sid": None, "phone_number_sid": None,
            "price": None, "price_unit": "USD", "queue_time": "0", "start_time": now if status != "queued" else None,
            "status": status, "to": to, "to_formatted": to, "trunk_sid": None, "uri": uri,
            "subresource_uris": {"notifications": uri.replace(".json", "/Notifications.json"),
                                 "recordings": uri.replace(".json", "/Recordings.json"),
                                 "events": uri.replace(".json", "/Events.json")},
        }

    @staticmethod
    def _error(status: int, code: int, message: str) -> JSONResponse:
        return JSONResponse({"code": code, "message": message,
                             "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
                            status_code=status)

    # ------------------------------------------------------------ the server
    @staticmethod
    def _basic(request: Request) -> tuple[str, str] | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    async def _handle(self, request: Request) -> Response:
        account = request.path_params["account_sid"]
        call_sid = request.path_params.get("call_sid")
        auth = self._basic(request)
        form: dict[str, list[str]] = {}
        if request.method == "POST":
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                return self._record(request, account, call_sid, form, auth,
                                    self._error(400, 20001, "Content-Type must be application/x-www-form-urlencoded"))
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        return await self._answer(request, account, call_sid, form, auth)

    async def _answer(self, request: Request, account: str, call_sid: str | None, form: dict[str, list[str]],
                      auth: tuple[str, str] | None) -> Response:
        path = request.url.path

        def done(resp: Response) -> Response:
            return self._record(request, account, call_sid, form, auth, resp)

        if auth != (self.account_sid, self.auth_token):
            return done(self._error(401, 20003, "Authenticate"))
        if account != self.account_sid:
            return done(self._error(404, 20404, f"The requested resource {path} was not found"))
        if self.faults:
            f = self.faults.pop(0)
            return done(self._error(f.status, f.code, f.message))
        if call_sid is None:
            return await self._create(request, form, done)
        call = self.calls.get(call_sid) if _CALL_SID.fullmatch(call_sid) else None
        if call is None:
            return done(self._error(404, 20404, f"The requested resource {path} was not found"))
        if request.method == "GET":
            return done(JSONResponse(call))
        return await self._update(request, call, form, done)

    async def _update(self, request: Request, call: dict[str, Any], form: dict[str, list[str]],
                      done: Callable[[Response], Response]) -> Response:
        twiml, url, status = (form.get(k, [None])[0] for k in ("Twiml", "Url", "Status"))
        if twiml is None and url is None and status is None:
            return done(self._error(400, 21205, "Url parameter is required"))
        if status is not None and status not in _UPDATE_STATUSES:
            return done(self._error(400, 21218, f"Invalid Status: {status}"))
        if twiml is not None and not _parses(twiml):
            return done(self._error(400, 12100, "Document parse failure"))
        if call["status"] in _ENDED:
            return done(self._error(400, 21220, "Call is not in-progress. Cannot redirect."))
        if self.on_update is not None:
            fault = await self.on_update(self._preview(request, call["sid"], form))
            if fault is not None:
                return done(self._error(fault.status, fault.code, fault.message))
        if status is not None:
            call["status"] = status
            call["end_time"] = formatdate(usegmt=True)
        call["date_updated"] = formatdate(usegmt=True)
        return done(JSONResponse(call))

    async def _create(self, request: Request, form: dict[str, list[str]],
                      done: Callable[[Response], Response]) -> Response:
        to, from_, url, twiml = (form.get(k, [None])[0] for k in ("To", "From", "Url", "Twiml"))
        if not to:
            return done(self._error(400, 21201, "No 'To' number is specified"))
        if not from_:
            return done(self._error(400, 21213, "No 'From' number is specified"))
        if url is None and twiml is None:
            return done(self._error(400, 21205, "Url parameter is required"))
        if twiml is not None and not _parses(twiml):
            return done(self._error(400, 12100, "Document parse failure"))
        if self.on_create is not None:
            fault = await self.on_create(self._preview(request, None, form))
            if fault is not None:
                return done(self._error(fault.status, fault.code, fault.message))
        call = self.add_call(to=to, from_=from_, status="queued", direction="outbound-api")
        callback = form.get("StatusCallback", [None])[0]
        if callback:
            self.status_callbacks[call["sid"]] = callback
        return done(JSONResponse(call, status_code=201))

    async def call_back(self, sid: str, status: str, *, public: str, real: str) -> int:
        """What Twilio does as a created call progresses: POST the call's ``StatusCallback`` (form ``CallSid``,
        ``AccountSid``, ``CallStatus``, ``Direction``...), signed with the auth token over the URL as given;
        ``public`` is the base of that URL, ``real`` where it is served here. The call's status follows."""
        url = self.status_callbacks[sid]
        call = self.calls[sid]
        call["status"] = status
        params = {"CallSid": sid, "AccountSid": self.account_sid, "CallStatus": status, "From": call["from"],
                  "To": call["to"], "Direction": "outbound-api", "ApiVersion": API.strip("/")}
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(real + url.removeprefix(public), data=params,
                                  headers={"X-Twilio-Signature": signature})
        return r.status_code

    def _preview(self, request: Request, call_sid: str | None, form: dict[str, list[str]]) -> Recorded:
        return Recorded(request.method, request.url.path, self.account_sid, call_sid, form, self._basic(request), 0)

    def _record(self, request: Request, account: str, call_sid: str | None, form: dict[str, list[str]],
                auth: tuple[str, str] | None, resp: Response) -> Response:
        self.requests.append(Recorded(request.method, request.url.path, account, call_sid, form, auth,
                                      resp.status_code))
        return resp

    def app(self) -> Starlette:
        base = API + "/Accounts/{account_sid}"
        return Starlette(routes=[
            Route(base + "/Calls.json", self._handle, methods=["POST"]),
            Route(base + "/Calls/{call_sid}.json", self._handle, methods=["GET", "POST"]),
        ])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TwilioRestDouble]:
        """Serve on loopback (``port``, or a free one) in the current event loop until the block ends."""
        self.port = self.port or free_port()
        server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, lifespan="off",
                                               log_config=None, access_log=False))
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), "the Twilio REST double did not start"
            await asyncio.sleep(0.02)
        try:
            yield self
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)


def _parses(twiml: str) -> bool:
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return False
    return root.tag == "Response"
