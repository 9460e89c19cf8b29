"""`sluice ingest`: ingest a source with a live progress bar and a closing summary table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, err_console, say_error
from sluice.settings import load_settings

COLUMNS = ("ingested", "updated", "unchanged", "deleted", "failed", "chunks", "embedded")


def ingest(
    source: Annotated[str, typer.Argument(help="A folder, a file or a glob.")],
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")],
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="Build this config's index instead (an experiment: not served)."),
    ] = None,
    sync: Annotated[bool, typer.Option("--sync", help="Delete stored documents missing from SOURCE.")] = False,
    collection: Annotated[str, typer.Option("--collection", help="Collection within the tenant.")] = "default",
    metadata: Annotated[
        Optional[str],
        typer.Option("--metadata", help='JSON object every document gets, under its own, e.g. \'{"team": "legal"}\'.'),
    ] = None,
    shard_size: Annotated[
        Optional[int],
        typer.Option("--shard-size", min=1, help="Distribute: shards of N documents to the ingest workers."),
    ] = None,
) -> None:
    """Parse, chunk, embed and store every file of SOURCE into the tenant's served index; exit 1 on any failure."""
    from sluice.db import Database
    from tasks.ingest_served import ingest_served
    from tasks.store import validate_collection

    settings = load_settings()
    validate_collection(collection)
    run_metadata = _metadata_option(metadata)
    if shard_size is not None:
        if run_metadata is not None:
            raise typer.BadParameter(
                "a distributed run takes metadata from manifests and sidecars, not --metadata", param_hint="--metadata"
            )
        return _distributed(settings, tenant, source, sync, collection, shard_size, config)
    with Database(settings) as db:
        once = _once(settings, db, tenant, source, sync, collection, run_metadata)
        if config is None:
            run = ingest_served(settings, db, tenant, collection, once)
            summary, index_id, note = run.summary, run.index_id, _served_note(run.indexes)
        else:
            summary, index_id, note = _experiment(settings, db, tenant, collection, config, once)
    print_summary(summary, index_id)
    for line in (note, summary.graph_note(index_id, tenant)):
        if line:
            console.print(line, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(code=1)


def _metadata_option(text: str | None) -> dict | None:
    """The --metadata JSON, checked as the run's metadata is (tasks/metadata.py)."""
    if text is None:
        return None
    import json

    from tasks.metadata import MetadataError, check_object

    try:
        return check_object(json.loads(text))
    except (ValueError, MetadataError) as exc:
        hint = 'pass a JSON object such as \'{"team": "legal"}\''
        raise typer.BadParameter(f"{exc}: {hint}", param_hint="--metadata") from None


def _distributed(settings, tenant: str, source: str, sync: bool, collection: str, size: int, config) -> None:
    """Fan SOURCE out over the ingest workers (serving/shards.py) and print the run's summary."""
    from serving.shards import ingest_distributed
    from sluice.db import Database

    if config is not None:
        raise typer.BadParameter("a distributed run builds the served index: drop --config", param_hint="--shard-size")
    with Database(settings) as db:
        state = ingest_distributed(settings, db, tenant, source, size, sync=sync, collection=collection)
    print_summary(state.summary, ", ".join(state.index_ids))
    console.print(f"run {state.summary.run_id}: {state.shards} shard(s) of up to {size} documents")
    if state.summary.failed:
        raise typer.Exit(code=1)


def _once(settings, db, tenant: str, source: str, sync: bool, collection: str, metadata: dict | None = None):
    """One ingestion of SOURCE into one config's index, with a progress bar."""
    from tasks.ingest import Run, run_ingest

    def once(pipeline, embedder):
        with _progress() as progress:
            options = {"collection": collection, "metadata": metadata, **_track(progress)}
            run = Run.configured(settings, db, tenant, pipeline, embedder, **options)
            return run_ingest(run, source, sync=sync)

    return once


def _experiment(settings, db, tenant: str, collection: str, path: Path, once):
    """Ingest into a --config index; the note says it is not what the tenant is served."""
    from sluice.config import load_config
    from sluice.served import served
    from tasks.embed import get_embedder

    pipeline = load_config(path)
    summary = once(pipeline, get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir))
    serving = served(settings, db, tenant, collection).index_id
    if serving == pipeline.index_id:
        return summary, pipeline.index_id, None
    note = (
        f"index {pipeline.index_id} ({path}) was built for experiments: tenant {tenant} is served by index "
        f"{serving}. It is served only after a rollout (`sluice champion promote` / `sluice champion rollout`) "
        f"or `sluice index activate {pipeline.index_id} --tenant {tenant}`."
    )
    return summary, pipeline.index_id, note


def _served_note(indexes: list[str]) -> str | None:
    if len(indexes) < 2:
        return None
    return f"the served index switched during the run: documents were also stored in {', '.join(indexes[1:])}"


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]documents"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks · {task.fields[rate]:.1f} embeddings/s"),
        TimeElapsedColumn(),
        console=err_console,
    )


def _track(progress: Progress) -> dict:
    """A run's display callbacks, all on one progress task added once the source is listed."""
    task = progress.add_task("ingest", start=False, total=None, chunks=0, rate=0.0, visible=False)
    counts = {"chunks": 0, "embedded": 0, "started": time.perf_counter()}

    def on_list(total: int) -> None:
        counts["started"] = time.perf_counter()
        progress.start_task(task)
        progress.update(task, total=total, visible=True)

    def on_file(item, outcome: str, chunks: int) -> None:
        counts["chunks"] += chunks
        progress.update(task, advance=1, chunks=counts["chunks"])

    def on_embed(n: int) -> None:
        counts["embedded"] += n
        progress.update(task, rate=counts["embedded"] / max(time.perf_counter() - counts["started"], 1e-9))

    return {"on_list": on_list, "on_file": on_file, "on_embed": on_embed}


def print_summary(summary, index_id: str) -> None:
    """The closing table (a `truncated` column when any chunk was), then one line per failed document."""
    table = Table(title=f"ingest {summary.run_id[:8]} into index {index_id}")
    columns = (*COLUMNS, "truncated") if summary.truncated else COLUMNS  # fits 80 columns when there is none
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*(str(getattr(summary, c)) for c in columns))
    console.print(table)
    if summary.truncated:
        console.print(
            f"{summary.truncated} chunk(s) are longer than the embedder's window and were embedded from their "
            "first tokens only: set the chunker's `max_tokens: auto` to split them",
            soft_wrap=True,
        )
    for err in summary.errors:
        say_error(str(err), "failed", "red")
