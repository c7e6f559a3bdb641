"""The web console: server-rendered pages (Jinja2, htmx, a little vanilla JS) served by control-api at ``/``.

Pages sign in with a cookie session and act through the same use cases and principal checks as the REST API, so a
role sees exactly what the API would show it; the pages' scripts call ``/v1/...`` with the same session and its
CSRF header. No build step: the templates and static files ship in this package (vendored files: see
``static/VENDORED.md``).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from . import admin, agents, calls, live, signin
from .web import STATIC_DIR

ROUTERS = (signin, agents, calls, live, admin)


def install(app: FastAPI) -> None:
    """Add the console's pages and its static files to ``app``."""
    for module in ROUTERS:
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="console-static")
