"""Twilio's REST API (Calls resource, API version 2010-04-01): update a live call, create an outbound one.

A small client on httpx, not the ``twilio`` package's REST client: one shared connection pool, a timeout on
every request, and errors that carry Twilio's error code but never a phone number (Twilio's error messages
may quote one). Requests are form-encoded and authenticated with HTTP Basic ``AccountSid:AuthToken``; the base
URL is a setting so that tests (``tests/doubles/twilio_rest.py``) and regional edges can stand in for
``https://api.twilio.com``.

- ``update_call``: ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with ``Twiml`` (replace
  what the call is doing, e.g. ``<Dial>`` for a transfer), ``Url`` or ``Status=completed``.
- ``create_call``: ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` with ``To``, ``From`` and ``Url`` or
  ``Twiml`` (and ``StatusCallback``).

``dial_twiml`` builds the TwiML of a transfer (XML-escaped by the ``twilio`` package's TwiML builder).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from twilio.twiml.voice_response import Dial, VoiceResponse
from voice_runtime.settings import TwilioSettings

API_VERSION = "2010-04-01"
ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
_SIP_URI = re.compile(r"sips?:[^\s<>\"@]{1,64}@[^\s<>\"]{1,200}", re.IGNORECASE)


class TwilioRestSettings(TwilioSettings):
    """Twilio's REST API, for call control (transfers) and outbound calls: the account and where the API is.
    The auth token is ``TWILIO_AUTH_TOKEN``, the one that signs Twilio's webhooks."""

    twilio_account_sid: str | None = Field(
        None, description="The Twilio account (AC...) whose calls ingress controls. Unset: transfers of Twilio "
        "calls fail with a clear reason",
    )
    twilio_api_base_url: str = Field(
        "https://api.twilio.com", pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Twilio's REST API (a test double in tests)",
    )
    twilio_api_timeout_s: float = Field(10.0, gt=0, le=60, description="Timeout of one Twilio REST request")

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is not None and not ACCOUNT_SID.fullmatch(value):
            raise ValueError("must be a Twilio account SID: AC and 32 hex digits")
        return value


class TwilioRestError(Exception):
    """Twilio refused a request (``status`` its HTTP status, ``code`` its error code), or could not be reached
    (``status`` 0). The message never quotes Twilio's own message, which may hold a phone number."""

    def __init__(self, status: int, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code = status, code


def dial_twiml(target: str) -> str:
    """``<Response><Dial><Number>+49…</Number></Dial></Response>`` (``<Sip>`` for a SIP URI). ValueError when
    ``target`` is neither an E.164 number nor a SIP URI."""
    dial = Dial()
    if _E164.fullmatch(target):
        dial.number(target)
    elif _SIP_URI.fullmatch(target):
        dial.sip(target)
    else:
        raise ValueError("the destination is neither an E.164 number nor a SIP URI")
    resp = VoiceResponse()
    resp.append(dial)
    return str(resp)


class TwilioRest:
    """One Twilio account's Calls resource. ``close`` frees the connection pool."""

    def __init__(self, account_sid: str, auth_token: SecretStr, *, base_url: str = "https://api.twilio.com",
                 timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not ACCOUNT_SID.fullmatch(account_sid):
            raise ValueError("not a Twilio account SID")
        self.account_sid = account_sid
        self._http = httpx.AsyncClient(
            base_url=f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}",
            auth=httpx.BasicAuth(account_sid, auth_token.get_secret_value()),
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_settings(cls, s: TwilioRestSettings) -> TwilioRest | None:
        """The client, or None when the account SID or the auth token is not configured."""
        if not s.twilio_account_sid or s.twilio_auth_token is None:
            return None
        return cls(s.twilio_account_sid, s.twilio_auth_token, base_url=s.twilio_api_base_url,
                   timeout_s=s.twilio_api_timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def update_call(self, call_sid: str, *, twiml: str | None = None, url: str | None = None,
                          status: str | None = None) -> dict[str, Any]:
        """Redirect a live call to new TwiML (``twiml`` or ``url``) or end it (``status="completed"``); the
        updated call resource."""
        if not CALL_SID.fullmatch(call_sid):
            raise TwilioRestError(0, None, "not a Twilio call SID")
        form = {k: v for k, v in (("Twiml", twiml), ("Url", url), ("Status", status)) if v is not None}
        if not form:
            raise ValueError("nothing to update")
        return await self._post(f"/Calls/{call_sid}.json", form)

    async def create_call(self, *, to: str, from_: str, url: str | None = None, twiml: str | None = None,
                          status_callback: str | None = None,
                          status_callback_events: tuple[str, ...] = ()) -> dict[str, Any]:
        """Place an outbound call that runs ``url``'s (or ``twiml``'s) TwiML once answered; the new call
        resource (its ``sid`` is the CallSid)."""
        if (url is None) == (twiml is None):
            raise ValueError("exactly one of url and twiml")
        form: dict[str, str | list[str]] = {"To": to, "From": from_}
        form.update({"Url": url} if url else {"Twiml": twiml or ""})
        if status_callback:
            form["StatusCallback"] = status_callback
            if status_callback_events:
                form["StatusCallbackEvent"] = list(status_callback_events)  # repeated, as Twilio takes it
        return await self._post("/Calls.json", form)

    async def _post(self, path: str, form: Mapping[str, str | list[str]]) -> dict[str, Any]:
        try:
            r = await self._http.post(path, data=form)
        except httpx.TimeoutException:
            raise TwilioRestError(0, None, "Twilio's REST API did not answer in time") from None
        except httpx.HTTPError as e:
            raise TwilioRestError(0, None, f"Twilio's REST API could not be reached ({type(e).__name__})") from None
        body: Any = None
        try:
            body = r.json()
        except ValueError:
            pass
        if r.is_success and isinstance(body, dict):
            return body
        code = body.get("code") if isinstance(body, dict) and isinstance(body.get("code"), int) else None
        detail = f"Twilio answered HTTP {r.status_code}" + (f", error {code}" if code is not None else "")
        raise TwilioRestError(r.status_code, code, detail)
