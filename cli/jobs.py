"""`sluice jobs dead` and `sluice jobs retry ID`: a tenant's dead letters, and replaying one."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import console, err_console
from sluice.settings import load_settings

app = typer.Typer(help="Jobs the workers gave up on (dead letters).", no_args_is_help=True)

PLAIN = {"soft_wrap": True, "highlight": False, "markup": False}
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant whose dead letters to read.")]


@app.command("dead")
def dead(
    tenant: TenantOpt,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10000, help="Rows to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array instead of a table.")] = False,
) -> None:
    """TENANT's dead letters, newest first: tasks that exhausted their retries or killed their worker."""
    from serving.deadletters_replay import dead_letters
    from sluice.db import Database

    with Database(load_settings()) as db:
        rows = dead_letters(db, tenant, limit)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    if not rows:
        console.print(f"no dead letters for tenant {tenant}", highlight=False)
        return
    for r in rows:  # a block per dead letter: a table of eight columns hides the ids at 80 columns
        span = f"{r.first_at:%Y-%m-%d %H:%M:%S} .. {r.last_at:%Y-%m-%d %H:%M:%S}"
        console.print(f"{r.task_id}  {r.task}  {r.reason}  {r.attempts} attempts  {span}", **PLAIN)
        console.print(f"    {r.short_error()}", **PLAIN)
        if r.retried_as:
            console.print(f"    retried as job {r.retried_as} (retry {r.retries})", **PLAIN)


@app.command("retry")
def retry(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's task id (`sluice jobs dead`).")],
    tenant: TenantOpt,
) -> None:
    """Send a dead letter's task again with its stored arguments; print the new job id (run twice: the same id)."""
    from serving.celery_app import create_celery
    from serving.deadletters_replay import replay
    from sluice.db import Database

    settings = load_settings()
    with Database(settings) as db:
        done = replay(db, create_celery(settings), tenant, task_id)
    note = "sent" if done.sent else "already sent by an earlier retry; nothing sent"
    err_console.print(f"dead letter {task_id} replayed as job {done.job_id} ({note})", highlight=False, soft_wrap=True)
    typer.echo(done.job_id)  # alone on stdout: `GET /v1/jobs/{id}` follows it
