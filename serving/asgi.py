"""ASGI factory for multi-process uvicorn: `uvicorn serving.asgi:app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from serving.api import create_app
from sluice.settings import load_settings


def app() -> FastAPI:
    """Build the API from the environment's Settings."""
    return create_app(load_settings())
