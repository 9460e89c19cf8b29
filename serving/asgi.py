"""ASGI factory for multi-process uvicorn: `uvicorn serving.asgi:app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from serving.api import create_app
from serving.mcp import mount
from sluice.logs import configure_logging
from sluice.settings import load_settings


def app() -> FastAPI:
    """Build the API from the environment's Settings."""
    settings = load_settings()
    configure_logging(settings)  # each uvicorn worker process is an entry point of its own
    return create_app(settings, beside=mount if settings.mcp_http else None)
