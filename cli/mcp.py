"""`sluice mcp`: the MCP server, on stdio (desktop agents) or streamable HTTP (`--http`)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import fail
from sluice.errors import SluiceError
from sluice.settings import load_settings

app = typer.Typer()


@app.command()
def mcp(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at /mcp instead of stdio.")] = False,
    host: Annotated[str | None, typer.Option(help="--http: bind address (default SLUICE_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="--http: port (default SLUICE_API_PORT).")] = None,
) -> None:
    """Serve MCP tools and resources over your documents (stdio: the key in SLUICE_API_KEY; HTTP: bearer keys)."""
    from sluice.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)  # stderr: stdout carries the protocol
    try:
        _serve_http(settings, host, port) if http else _serve_stdio(settings)
    except SluiceError as exc:
        fail(exc)


def _serve_stdio(settings) -> None:
    import anyio

    from serving.mcp.stdio import serve_stdio

    anyio.run(serve_stdio, settings)


def _serve_http(settings, host: str | None, port: int | None) -> None:
    """Only the MCP endpoint (and health checks), with the API's admission: keys, limits, metrics."""
    import uvicorn

    from serving.api import create_app
    from serving.http_deadlines import deadline_protocol
    from serving.mcp import mount

    uvicorn.run(
        create_app(settings, rest=False, beside=mount),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        timeout_keep_alive=settings.keep_alive_s,
        http=deadline_protocol(settings),
    )
