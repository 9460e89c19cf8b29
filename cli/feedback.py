"""`sluice feedback export`: a tenant's feedback as a gold set that `sluice eval --gold` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console, err_console
from cli.common import fail as _fail
from sluice.errors import SluiceError
from sluice.settings import load_settings

app = typer.Typer(help="Users' feedback on answers.", no_args_is_help=True)


@app.command("export")
def export(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant whose feedback to export.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSONL file to write (default: stdout).")] = None,
) -> None:
    """Write TENANT's rated answers, corrections and named spans as a JSONL gold set (see evals/gold.py)."""
    from evals.feedback_gold import export_gold, write_jsonl
    from sluice.db import Database

    try:
        with Database(load_settings()) as db:
            result = export_gold(db, tenant)
    except SluiceError as exc:
        _fail(exc)
    text = write_jsonl(result.items, out)
    if out is None:
        typer.echo(text, nl=False)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.skipped.items())) or "none"
    summary = f"{len(result.items)} gold items from tenant {tenant}'s feedback; skipped: {skipped}"
    (console if out is not None else err_console).print(
        summary + (f"; written to {out}" if out else ""), soft_wrap=True, highlight=False
    )
    if not result.items:
        raise typer.Exit(code=1)
