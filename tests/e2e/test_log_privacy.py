"""No caller speech, agent reply, system prompt or phone number reaches a log line, at the default settings
(no LOG_REDACTION_KEY, no LOG_PERSONAL_DATA), across one whole call: every service's log (ingress, media, stt,
brain, tts, analytics and control-api, stdout and stderr) is read after the call configured through the REST
API (``rest_call.py``) has ended everywhere."""

from __future__ import annotations

import hashlib
import os
import re
import secrets

import pytest

from bench.twilio_caller import TwilioCaller

from .conftest import PUBLIC, STACK, TWILIO_TOKEN, Platform
from .rest_call import FIRST_MESSAGE, SYSTEM_PROMPT, RestCall

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

GRAM = 4  # a run of this many words of a text, found in a log line, is that text leaking


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\\n", " "))


def grams(text: str) -> set[str]:
    w = _words(text)
    if len(w) < GRAM:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i : i + GRAM]) for i in range(len(w) - GRAM + 1)}


def number_forms(e164: str) -> tuple[set[str], set[str]]:
    """(digit strings, literal strings) a number may be written as: +14155550142, 14155550142, 4155550142,
    (415) 555-0142, 415-555-0142 ... all reduce to one of the digit strings once separators are removed; and the
    12-hex-digit unsalted SHA-256 tags an earlier redaction wrote (reversible by enumerating numbers)."""
    digits = e164.lstrip("+")
    national = digits[1:] if digits.startswith("1") and len(digits) == 11 else digits
    tags = {hashlib.sha256(v.encode()).hexdigest()[:12] for v in (e164, digits, national)}
    return {digits, national}, tags


def leaks(line: str, texts: dict[str, set[str]], numbers: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """What of the personal data ``line`` carries, by kind."""
    found = []
    flat = " " + " ".join(_words(line)) + " "
    for kind, wanted in texts.items():
        hit = min((g for g in wanted if f" {g} " in flat), default=None)
        if hit:
            found.append(f"{kind}: {hit!r}")
    runs = {re.sub(r"\D", "", m.group(0)) for m in re.finditer(r"\d[\d\s().\-/]*\d", line)}
    for kind, (digit_forms, tags) in numbers.items():
        if any(form in run for run in runs for form in digit_forms) or any(t in line for t in tags):
            found.append(f"{kind} number")
    return found


@pytest.mark.unit
def test_leak_detection() -> None:
    texts = {"caller speech": grams("When is the lantern room open to visitors?")}
    numbers = {"caller": number_forms("+16285550143")}
    assert leaks('{"event": "call_started", "from_number": "[redacted]"}', texts, numbers) == []
    assert leaks('{"text": "when is the LANTERN room open"}', texts, numbers) == [
        "caller speech: 'is the lantern room'"
    ]
    for written in (
        "+16285550143",
        "16285550143",
        "(628) 555-0143",
        "628.555.0143",
        "tel:628-555-0143",
        "%2B16285550143",
    ):
        assert leaks(f'{{"event": "x", "to": "{written}"}}', texts, numbers) == ["caller number"], written
    tag = hashlib.sha256(b"+16285550143").hexdigest()[:12]
    assert leaks(f'{{"event": "x", "from_hash": "{tag}"}}', texts, numbers) == ["caller number"]
    # neither an unrelated number nor a few common words are a leak
    assert leaks('{"event": "x", "port": 16285, "seq": 5550143, "msg": "the room is open"}', texts, numbers) == []


async def test_no_personal_data_in_any_log_line(rest_call: RestCall, platform: Platform) -> None:
    assert not any(k in os.environ for k in ("LOG_REDACTION_KEY", "LOG_PERSONAL_DATA")), "not the default settings"
    # the same caller also dials a number nobody configured: ingress logs that refusal with the number in it
    unknown = "+1212" + str(secrets.randbelow(9_000_000) + 1_000_000)
    stray = TwilioCaller(
        platform.ingress, auth_token=TWILIO_TOKEN, public_base_url=PUBLIC, to=unknown, from_=rest_call.caller_number
    )
    with pytest.raises(RuntimeError):
        await stray.dial()
    assert "<Hangup" in stray.twiml
    caller_said = [t["text"] for t in rest_call.turns if t["speaker"] == "caller"]
    agent_said = [t["text"] for t in rest_call.turns if t["speaker"] == "agent"]
    assert caller_said and len(agent_said) >= 2, "the call must have caller speech and a reply besides the greeting"
    assert FIRST_MESSAGE in agent_said
    texts = {
        "caller speech": set().union(*(grams(t) for t in caller_said)),
        "agent reply": set().union(*(grams(t) for t in agent_said)),
        "system prompt": grams(SYSTEM_PROMPT),
    }
    numbers = {
        "caller": number_forms(rest_call.caller_number),
        "called": number_forms(rest_call.number),
        "unknown": number_forms(unknown),
    }

    services = (*STACK, "control-api")
    logs = {name: platform.log(name) for name in services}
    assert all(logs.values()), f"no log from {[n for n, text in logs.items() if not text]}"
    # the logs are the call's: the services that handle a call say so with its id
    mentioned = {name for name, text in logs.items() if rest_call.call_id in text}
    assert {"ingress", "media"} <= mentioned, f"the call is missing from the logs of {set(STACK) - mentioned}"
    assert "call_rejected_no_agent" in logs["ingress"], "the refused call was not logged"

    found = [
        f"{name}: {kinds} in {line[:300]}"
        for name, text in logs.items()
        for line in text.splitlines()
        if (kinds := leaks(line, texts, numbers))
    ]
    assert found == [], "personal data in logs:\n" + "\n".join(found[:20])
