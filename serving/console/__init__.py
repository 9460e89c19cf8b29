"""The web console at /console (sign in with a tenant key; ask, documents, pipeline) and offline /docs, /redoc.

Server-rendered Jinja2 pages, one small script and one style sheet, no frontend build. Handlers call
the API's internal functions (the same ones the /v1 routes call), never the API over HTTP.
"""

from __future__ import annotations

from fastapi import FastAPI

from serving.console import docs


def install(app: FastAPI) -> None:
    """Add /docs, /redoc (offline) and the console to an app built with docs_url=None and redoc_url=None."""
    app.include_router(docs.router)  # before the asset mount: it overrides one of its files
    docs.mount_assets(app)
