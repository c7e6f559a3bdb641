"""The demo restaurant's table-booking service: what the default agent's ``book_table`` HTTP tool calls under
`make run` (``python -m voice_devstack.booking --port 8095``; loopback only, no dependencies beyond the standard
library). Not a product: bookings live in memory (the newest ``MAX_BOOKINGS``) and vanish on restart.

- ``POST /bookings`` with JSON ``{"name", "party_size" (1-12), "date" (YYYY-MM-DD), "time" (HH:MM, 24 h)}`` ->
  201 ``{"booking_id", "status": "confirmed", ..., "message"}``; 422 for a malformed request, 409 when the bistro
  is closed then (Mondays; outside 12:00-21:30) or the date is past or more than 60 days ahead, each with
  ``{"error": ...}`` saying why (the agent reads it to the caller);
- ``GET /bookings/<id>`` -> the booking, or 404;
- ``GET /healthz`` -> 200.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import threading
from collections import OrderedDict
from datetime import date, datetime, time, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_PORT = 8095
MAX_BOOKINGS = 1000
MAX_BODY_BYTES = 4096
OPENS, LAST_TABLE = time(12, 0), time(21, 30)
MAX_DAYS_AHEAD = 60
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^\d{1,2}:\d{2}$")


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Book:
    """The reservation book (thread-safe, bounded)."""

    def __init__(self, today: date | None = None) -> None:
        self._today = today
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.bookings: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def today(self) -> date:
        return self._today or date.today()

    def book(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refused(422, "send a JSON object with name, party_size, date and time")
        name, size, day, at = body.get("name"), body.get("party_size"), body.get("date"), body.get("time")
        if not isinstance(name, str) or not name.strip() or len(name) > 80:
            raise Refused(422, "name: the guest's name is needed (at most 80 characters)")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 12:
            raise Refused(422, "party_size: from 1 to 12 guests (ask for the events team for larger groups)")
        if not isinstance(day, str) or not _DATE.match(day):
            raise Refused(422, "date: YYYY-MM-DD")
        if not isinstance(at, str) or not _TIME.match(at):
            raise Refused(422, "time: HH:MM on a 24-hour clock")
        try:
            when = datetime.combine(date.fromisoformat(day), time.fromisoformat(at.zfill(5)))
        except ValueError:
            raise Refused(422, "date or time is not a real date or time") from None
        today = self.today()
        if when.date() < today:
            raise Refused(409, "that date has passed")
        if when.date() > today + timedelta(days=MAX_DAYS_AHEAD):
            raise Refused(409, f"tables can be booked up to {MAX_DAYS_AHEAD} days ahead")
        if when.weekday() == 0:
            raise Refused(409, "the bistro is closed on Mondays")
        if not OPENS <= when.time() <= LAST_TABLE:
            raise Refused(409, "tables can be booked from 12:00 to 21:30")
        with self._lock:
            booking_id = f"HL-{next(self._ids):04d}"
            booking = {"booking_id": booking_id, "status": "confirmed", "name": name.strip(), "party_size": size,
                       "date": when.date().isoformat(), "time": when.strftime("%H:%M"),
                       "message": f"Table for {size} on {when:%A %d %B} at {when:%H:%M}, booking {booking_id}."}
            self.bookings[booking_id] = booking
            while len(self.bookings) > MAX_BOOKINGS:
                self.bookings.popitem(last=False)
        return booking

    def get(self, booking_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self.bookings.get(booking_id)


def handler(book: Book) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "HarbourLightsBookings/1"

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"status": "ok"})
                return
            if self.path.startswith("/bookings/"):
                found = book.get(self.path.removeprefix("/bookings/"))
                self._send(200, found) if found else self._send(404, {"error": "no such booking"})
                return
            self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/bookings":
                self._send(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(413, {"error": "request too large"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                self._send(201, book.book(body))
            except json.JSONDecodeError:
                self._send(422, {"error": "the body is not JSON"})
            except Refused as e:
                self._send(e.status, {"error": str(e)})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # guests' names stay out of the logs

    return Handler


def serve(port: int = DEFAULT_PORT, host: str = "127.0.0.1", book: Book | None = None) -> ThreadingHTTPServer:
    """The service bound (not yet serving: call ``serve_forever``, e.g. in a thread)."""
    return ThreadingHTTPServer((host, port), handler(book or Book()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = serve(args.port, args.host)
    print(f"demo booking service on http://{args.host}:{args.port}/bookings", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
