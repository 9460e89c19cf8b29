"""`sluice serve`, `sluice worker`, `sluice key create/revoke` (`demo-api` is in `cli/demo.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console
from sluice.settings import load_settings

app = typer.Typer()
key_app = typer.Typer(help="Per-tenant API keys (stored hashed; the secret is shown once).", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("create")
def key_create(tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]) -> None:
    """Create an API key for TENANT and print it once."""
    from serving.auth import create_key
    from sluice.db import Database

    with Database(load_settings()) as db:
        new = create_key(db, tenant)
    console.print(f"key id: {new.key_id}  tenant: {new.tenant}")
    console.print("secret (shown once, store it now):")
    print(new.secret)


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID; requests with it get 401 from now on."""
    from serving.auth import revoke_key
    from sluice.db import Database

    with Database(load_settings()) as db:
        tenant = revoke_key(db, key_id)
    console.print(f"revoked key {key_id} of tenant {tenant!r}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default SLUICE_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SLUICE_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn). Work is done by `sluice worker` processes."""
    import uvicorn

    from serving.http_deadlines import deadline_protocol
    from sluice.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)
    # log_config=None: uvicorn keeps the root handler above (JSON lines) instead of installing its own.
    options = {
        "host": host or settings.api_host,
        "port": port or settings.api_port,
        "log_config": None,
        "timeout_keep_alive": settings.keep_alive_s,
        "http": deadline_protocol(settings),  # uvicorn's h11 protocol with header and body read deadlines
    }
    if workers > 1:
        uvicorn.run("serving.asgi:app", factory=True, workers=workers, **options)
        return
    from serving.api import create_app
    from serving.mcp import mount

    uvicorn.run(create_app(settings, beside=mount if settings.mcp_http else None), **options)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Processes (default SLUICE_WORKER_CONCURRENCY).")] = None,
    queues: Annotated[str, typer.Option(help="Queues to consume.")] = "query,ingest",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    name: Annotated[str, typer.Option(help="Celery node name (unique per worker on one host).")] = "sluice@%h",
) -> None:
    """Run a Celery worker for the query and ingest queues (loads the embedder once per process)."""
    from serving.worker import create_worker_app

    settings = load_settings()
    app_ = create_worker_app(settings)
    app_.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency or settings.worker_concurrency),
            "--loglevel",
            loglevel,
            "-n",
            name,
        ]
    )
