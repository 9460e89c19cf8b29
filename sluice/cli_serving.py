"""`sluice serve`, `sluice worker`, `sluice key create/revoke`."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice.cli_common import console
from sluice.cli_common import fail as _fail
from sluice.errors import SluiceError
from sluice.settings import load_settings

app = typer.Typer()
key_app = typer.Typer(help="Per-tenant API keys (stored hashed; the secret is shown once).", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("create")
def key_create(tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]) -> None:
    """Create an API key for TENANT and print it once."""
    from serving.auth import create_key
    from sluice.db import Database

    try:
        with Database(load_settings()) as db:
            new = create_key(db, tenant)
    except SluiceError as exc:
        _fail(exc)
    console.print(f"key id: {new.key_id}  tenant: {new.tenant}")
    console.print("secret (shown once, store it now):")
    print(new.secret)


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID; requests with it get 401 from now on."""
    from serving.auth import revoke_key
    from sluice.db import Database

    try:
        with Database(load_settings()) as db:
            tenant = revoke_key(db, key_id)
    except SluiceError as exc:
        _fail(exc)
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
    # http: uvicorn's h11 protocol with header and body read deadlines (uvicorn itself has none).
    options = {
        "host": host or settings.api_host,
        "port": port or settings.api_port,
        "log_config": None,
        "timeout_keep_alive": settings.keep_alive_s,
        "http": deadline_protocol(settings),
    }
    if workers > 1:
        uvicorn.run("serving.asgi:app", factory=True, workers=workers, **options)
        return
    from serving.api import create_app

    uvicorn.run(create_app(settings), **options)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Processes (default SLUICE_WORKER_CONCURRENCY).")] = None,
    queues: Annotated[str, typer.Option(help="Queues to consume.")] = "query,ingest",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
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
            "sluice@%h",
        ]
    )


@app.command("demo-api")
def demo_api(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    detach: Annotated[bool, typer.Option(help="Leave API and worker running in the background and return.")] = False,
    stop: Annotated[bool, typer.Option(help="Stop an API and worker left running by --detach.")] = False,
) -> None:
    """Answer the sample questions through the API and a real worker, then keep both up for curl."""
    import json
    import os
    import subprocess
    import sys

    from serving.auth import create_key
    from sluice.db import Database, create_tenant, migrate
    from sluice.settings import PROJECT_ROOT

    settings = load_settings()
    pid_file = settings.data_dir / "demo-api.pids"
    _stop_detached(pid_file)
    if stop:
        return
    try:
        migrate(settings)
        with Database(settings) as db:
            create_tenant(db, "demo", "Demo tenant")
            key = create_key(db, "demo").secret
    except SluiceError as exc:
        _fail(exc)
    env = dict(os.environ, SLUICE_INGEST_ROOT=str(PROJECT_ROOT / "data" / "sample"))
    cli = [sys.executable, "-m", "sluice.cli"]
    logs = {name: settings.data_dir / f"demo-api-{name}.log" for name in ("worker", "serve")}

    def spawn(name: str, args: list[str]) -> subprocess.Popen:
        if not detach:
            return subprocess.Popen(cli + args, env=env)
        # Detached: own session and log files, so they outlive this command (and `make demo`).
        with logs[name].open("wb") as log:
            return subprocess.Popen(cli + args, env=env, start_new_session=True, stdout=log, stderr=log)

    procs = [spawn("worker", ["worker", "--loglevel", "WARNING"]), spawn("serve", ["serve", "--port", str(port)])]
    where = f"see {logs['worker']} and {logs['serve']}" if detach else "see the output above"
    if detach:
        pid_file.write_text(" ".join(str(p.pid) for p in procs))
    try:
        gold = PROJECT_ROOT / "data" / "sample" / "gold.jsonl"
        _demo_requests(f"http://{settings.api_host}:{port}", key, gold, where)
        console.print(
            "\nAPI and worker are running; try:" if detach else "\nAPI and worker are running; try (Ctrl-C stops both):"
        )
        body = json.dumps({"question": "How long is the warranty on a carbon fibre frame?"})
        print(
            f"curl -s -H 'Authorization: Bearer {key}' -H 'content-type: application/json' "
            f"-d '{body}' http://{settings.api_host}:{port}/v1/query"
        )
        if detach:
            console.print("stop them with: sluice demo-api --stop")
            return
        procs[1].wait()
    except KeyboardInterrupt:
        pass
    except BaseException:
        _stop_detached(pid_file)
        raise
    finally:
        if not detach:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)


def _stop_detached(pid_file) -> None:
    """Terminate an API and worker a previous `demo-api --detach` left running."""
    import os
    import signal

    if not pid_file.exists():
        return
    for pid in pid_file.read_text().split():
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
    pid_file.unlink()


def _demo_requests(base: str, key: str, gold, where: str) -> None:
    import json
    import time

    import httpx

    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    deadline, last = time.monotonic() + 180, "no answer"
    while True:
        try:
            checks = client.get("/readyz").json()
            if checks["ready"]:
                break
            last = str(checks.get("checks"))
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            _fail(
                SluiceError(
                    f"the demo API at {base} was not ready after 180 s (last /readyz: {last}); {where}, "
                    "then re-run `sluice demo-api --detach` (a port in use: pass --port)"
                )
            )
        time.sleep(1)
    job = client.post("/v1/jobs", json={"kind": "ingest", "source": "corpus"}).json()["job_id"]
    while (status := client.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
        time.sleep(0.5)
    console.print(f"ingest job {job}: {status['status']} {status.get('result') or status.get('error')}")
    for line in gold.read_text().splitlines():
        question = json.loads(line)["question"]
        body = client.post("/v1/query", json={"question": question}).json()
        console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] {body.get('answer', body)}\n")
