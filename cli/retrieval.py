"""Retrieval commands: `sluice eval-retrieval` and `sluice index ...` (active embedding spaces)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import StageProgress, console
from sluice.errors import QueryError
from sluice.settings import load_settings

app = typer.Typer(no_args_is_help=True)
index_app = typer.Typer(help="Embedding spaces: activate one per collection, drop old ones.", no_args_is_help=True)
app.add_typer(index_app, name="index")


TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]
CollectionOpt = Annotated[str, typer.Option("--collection", help="Collection within the tenant.")]


def parse_filter(text: str | None) -> dict | None:
    """Parse a --filter JSON object; raise QueryError naming the problem."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueryError(f"--filter is not valid JSON ({exc.msg} at char {exc.pos}): pass a JSON object") from exc
    if not isinstance(value, dict):
        raise QueryError('--filter must be a JSON object, e.g. {"doc.lang": "en"}')
    return value


@app.command("eval-retrieval")
def eval_retrieval(
    beir: Annotated[Path, typer.Option("--beir", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline config YAML.")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the throwaway tenant's data.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score dense, BM25 and hybrid (rrf, convex) retrieval on a BEIR dataset (nDCG@10, Recall@10/100, MRR@10)."""
    from sluice.config import load_config
    from sluice.db import Database
    from tasks.beir import METRICS, eval_beir
    from tasks.embed import get_embedder

    settings = load_settings()
    pipeline = load_config(config or settings.config_path)
    embedder = get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir)
    with Database(settings) as db, StageProgress() as progress:
        progress.update("loading the embedding model")  # on first use, inside eval_beir
        results = eval_beir(db, pipeline, embedder, beir, keep=keep, on_progress=progress.update)
    if as_json:
        print(json.dumps({"config_id": pipeline.config_id, "results": results}, indent=2))
        return
    table = Table(title=f"retrieval on {beir} (config {pipeline.config_id})")
    table.add_column("mode")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    for mode, scores in results.items():
        table.add_row(mode, *(f"{scores[m]:.4f}" for m in METRICS))
    console.print(table)


@index_app.command("activate")
def index_activate(index_id: str, tenant: TenantOpt, collection: CollectionOpt = "default") -> None:
    """Make INDEX_ID serve a collection, atomically; the previous index keeps its chunks."""
    from sluice.db import Database
    from tasks.indexes import activate_index

    with Database(load_settings()) as db, db.tenant(tenant) as conn:
        previous = activate_index(conn, index_id, collection)
    console.print(f"collection {collection!r} now served by {index_id} (was {previous or 'the config default'})")


@index_app.command("drop")
def index_drop(index_id: str, tenant: TenantOpt) -> None:
    """Delete the tenant's chunks of INDEX_ID (refused while it is active for a collection)."""
    from sluice.db import Database
    from tasks.indexes import drop_indexes

    with Database(load_settings()) as db:
        deleted = drop_indexes(db, tenant, [index_id])[index_id]
    console.print(f"dropped {deleted} chunks of index {index_id}")


@index_app.command("list")
def index_list(tenant: TenantOpt) -> None:
    """The tenant's indexes, their chunk counts, the collections they serve and their HNSW graph (own or shared)."""
    from sluice.db import Database
    from tasks.indexes import list_indexes

    with Database(load_settings()) as db, db.tenant(tenant) as conn:
        rows = list_indexes(conn)
    table = Table(title=f"indexes of tenant {tenant}")
    for col in ("index_id", "embedder", "chunks", "active for", "graph"):
        table.add_column(col)
    for row in rows:
        table.add_row(row[0], row[1], str(row[2]), ", ".join(row[3]) or "-", row[4])
    console.print(table)


@index_app.command("build-graph")
def index_build_graph(
    index_id: str,
    tenant: TenantOpt,
    lock_timeout: Annotated[
        Optional[float], typer.Option(help="Seconds to wait for the lock on chunks (default: the setting).")
    ] = None,
) -> None:
    """Build INDEX_ID's HNSW graph if it is missing (one deferred by a lock on chunks); exit 1 if deferred again."""
    from sluice.db import Database
    from tasks.bulk import ensure_vector_index, index_dim
    from tasks.graph import Graph

    settings = load_settings()
    with Database(settings) as db, db.tenant(tenant) as conn:
        timeout = lock_timeout or settings.graph_build_lock_timeout_s
        graph = ensure_vector_index(conn, index_id, index_dim(conn, index_id), timeout, settings.own_graph_rows)
    console.print(f"index {index_id}: HNSW graph {graph}")
    if graph == Graph.DEFERRED:
        console.print("a transaction still holds a lock on chunks: try again later, or with a longer --lock-timeout")
        raise typer.Exit(code=1)


@index_app.command("gc")
def index_gc(
    tenant: Annotated[Optional[str], typer.Option("--tenant", "-t", help="One tenant (default: every tenant).")] = None,
    older_than_days: Annotated[
        Optional[float], typer.Option(help="Keep an index a tenant left less than this many days ago.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be dropped.")] = False,
) -> None:
    """Drop indexes a tenant is neither served nor rolling out to (kept after a rollout for instant rollback)."""
    from sluice.db import Database
    from tasks.indexes import collect_garbage
    from tasks.rollout import tenants_in_scope

    settings = load_settings()
    with Database(settings) as db:
        dropped = collect_garbage(settings, db, tenants_in_scope(db, tenant), older_than_days, dry_run)
    verb = "would drop" if dry_run else "dropped"
    for name, indexes in dropped.items():
        if indexes:
            console.print(f"tenant {name}: {verb} {', '.join(indexes)}")
    console.print(f"{sum(len(i) for i in dropped.values())} index(es) {verb} over {len(dropped)} tenant(s)")
