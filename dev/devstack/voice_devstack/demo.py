"""The demo behind `make run`'s default agent: the host of a fictional restaurant (Harbour Lights Bistro) with

- a knowledge base of three documents shipped here (``demo/``: hours, menu, parking and the way there),
- one HTTP tool, ``book_table``, served by the sample booking service `make run` starts on loopback
  (``voice_devstack.booking``, port ``DEMO_BOOKING_PORT``, 8095 by default), which the egress guard lets through only
  because `make run` adds its ``host:port`` to ``EGRESS_ALLOW`` (control-api checks it on save, brain on connect),
- intents with cached answers for the opening hours and the address (spoken without an LLM request), and a booking
  intent without an answer (the LLM gets it as a hint).

`make run` writes the spec (``demo_spec``) to ``STATE_DIR/demo-agent.json`` and points control-api's
``BOOTSTRAP_DEFAULT_AGENT_SPEC`` at it: control-api seeds the default agent from it the first time it stores the
default agent (a database that already has one keeps it as it is). ``DEMO_AGENT=false`` turns the demo off.

The booking tool needs a model that calls tools (the embedded SmolLM2 never does: point ``LLM_BASE_URL`` at one that
can); the knowledge and the cached answers work with any.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .booking import DEFAULT_PORT

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DOCUMENTS = ("hours.md", "menu.md", "parking.md")
SPEC_FILE = "demo-agent.json"
FALSE = ("0", "false", "f", "no", "n", "off")

HOURS = "We're open Tuesday to Sunday from 12 noon to 10 pm, and closed on Mondays. The kitchen's last orders are " \
        "at 9:30."
ADDRESS = "We're at 12 Harbour Street in Port Ellery, on the quay next to the old lighthouse. Our free car park " \
          "is behind the bistro, entered from Rope Walk."

SYSTEM_PROMPT = (
    "You are the friendly host of Harbour Lights Bistro, a seafood restaurant in Port Ellery, answering its phone. "
    "Answer in one or two short spoken sentences. Use the restaurant's documents for the menu, hours, parking and "
    "directions, and never invent what they do not say. To book a table, ask for the guest's name, the number of "
    "guests, the date and the time, then call book_table and read back the confirmation. Say goodbye and end the "
    "call when the caller is done."
)


def booking_url(port: int = DEFAULT_PORT) -> str:
    return f"http://127.0.0.1:{port}/bookings"


def booking_tool(url: str) -> dict[str, Any]:
    return {
        "type": "http", "name": "book_table", "method": "POST", "url": url,
        "description": "Book a table at Harbour Lights Bistro once you know the guest's name, party size, date "
                       "and time. Returns the booking id, or an error saying why it cannot be booked.",
        "parameters": {
            "type": "object", "required": ["name", "party_size", "date", "time"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 80, "description": "The guest's name"},
                "party_size": {"type": "integer", "minimum": 1, "maximum": 12, "description": "Number of guests"},
                "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "description": "YYYY-MM-DD"},
                "time": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$", "description": "HH:MM, 24-hour"},
            },
        },
        "timeout_s": 5.0,
        "response_fields": ["booking_id", "status", "date", "time", "party_size"],
        "filler": "One moment, I'm checking the reservation book.",
        "filler_after_ms": 1200,
    }


INTENTS: list[dict[str, Any]] = [
    {"name": "opening_hours", "answer": HOURS, "examples": [
        "What are your opening hours?", "When are you open?", "What time do you open?", "What time do you close?",
        "Are you open on Sundays?", "Are you open today?"]},
    {"name": "address", "answer": ADDRESS, "examples": [
        "Where are you located?", "What is your address?", "How do I find the restaurant?",
        "Where exactly is the bistro?"]},
    {"name": "booking", "examples": [
        "I'd like to book a table.", "Can I make a reservation?", "Do you have a table for four tonight?",
        "I want to reserve a table for Saturday."]},
]


def demo_spec(url: str) -> dict[str, Any]:
    """What control-api seeds the default agent with (``BOOTSTRAP_DEFAULT_AGENT_SPEC``): the agent's fields and
    one knowledge base with its documents."""
    return {
        "agent": {
            "name": "Harbour Lights Bistro (demo)",
            "system_prompt": SYSTEM_PROMPT,
            "first_message": "Hello, Harbour Lights Bistro! How can I help you?",
            "tools": [{"type": "end_call"}, booking_tool(url)],
            "intents": INTENTS,
            "intent_threshold": 0.6,
        },
        "knowledge_base": {
            "name": "Harbour Lights Bistro",
            "description": "The demo restaurant's hours, menu and parking",
            "documents": [{"filename": name, "text": (DEMO_DIR / name).read_text()} for name in DOCUMENTS],
        },
    }


def enabled(environ: Mapping[str, str]) -> bool:
    return (environ.get("DEMO_AGENT") or "true").strip().lower() not in FALSE


def booking_port(environ: Mapping[str, str]) -> int:
    raw = (environ.get("DEMO_BOOKING_PORT") or str(DEFAULT_PORT)).strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise SystemExit(f"DEMO_BOOKING_PORT must be a port number, not {raw!r}")
    return int(raw)


def demo_env(environ: Mapping[str, str], state: Path) -> dict[str, str]:
    """What `make run` adds to every service's environment for the demo: the booking service on the egress
    allow-list (after the user's own entries) and, for control-api, the spec it seeds the default agent from
    (written to ``state``). Empty with ``DEMO_AGENT=false``."""
    if not enabled(environ):
        return {}
    port = booking_port(environ)
    spec = state / SPEC_FILE
    spec.write_text(json.dumps(demo_spec(booking_url(port)), indent=2) + "\n")
    allow = [e.strip() for e in (environ.get("EGRESS_ALLOW") or "").split(",") if e.strip()]
    entry = f"127.0.0.1:{port}"
    return {"EGRESS_ALLOW": ",".join([*allow, entry] if entry not in allow else allow),
            "BOOTSTRAP_DEFAULT_AGENT_SPEC": str(spec)}
