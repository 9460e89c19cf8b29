"""The web console at /console (sign in with a tenant key; ask, documents, pipeline) and offline /docs, /redoc.

Server-rendered Jinja2 pages, one small script and one style sheet, no frontend build. Handlers call
the API's internal functions (the same ones the /v1 routes call), never the API over HTTP.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from serving.console import ask, docs, documents, feedback, pages, pipeline
from serving.console.session import Sessions
from sluice.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Add /docs, /redoc (offline) and the console to an app built with docs_url=None and redoc_url=None."""
    app.include_router(docs.router)  # before the asset mount: it overrides one of its files
    docs.mount_assets(app)
    app.state.console_sessions = Sessions(settings)
    for module in (pages, ask, feedback, documents, pipeline):
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
