"""The `sluice` command line."""

from __future__ import annotations

import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import demo as cli_demo_api
from cli import jobs as cli_jobs
from cli import llm as cli_llm
from cli import mcp as cli_mcp
from cli import retrieval as cli_retrieval
from cli import status as cli_status
from cli.common import SluiceGroup, console, err_console
from cli.eval import register_eval_commands
from cli.feedback import app as feedback_app
from cli.ingest import ingest as ingest_command
from cli.ingest import print_summary
from cli.routing import router_app
from cli.serving import app as serving_app
from sluice.settings import PROJECT_ROOT, Settings, load_settings

app = typer.Typer(cls=SluiceGroup, help="Sluice: workflow-orchestrated RAG data pipeline.", no_args_is_help=True)
db_app = typer.Typer(help="The database: start the embedded server, migrate, stop.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(cli_retrieval.app)
app.add_typer(router_app, name="router")
app.add_typer(feedback_app, name="feedback")
app.add_typer(cli_jobs.app, name="jobs")
register_eval_commands(app)
app.add_typer(serving_app)  # serve, worker, key
app.add_typer(cli_demo_api.app)  # demo-api
app.command(name="ingest")(ingest_command)
app.add_typer(cli_status.app)  # status
app.add_typer(cli_mcp.app)  # mcp
app.add_typer(cli_llm.app, name="llm")  # llm serve


SAMPLE_CORPUS = PROJECT_ROOT / "data" / "sample" / "corpus"
SAMPLE_GOLD = PROJECT_ROOT / "data" / "sample" / "gold.jsonl"

TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]


def _settings() -> Settings:
    return load_settings()


def _database(settings: Settings):
    from sluice.db import Database

    return Database(settings)


@db_app.command("up")
def db_up() -> None:
    """Start the embedded server (when no SLUICE_DATABASE_URL is set) and apply migrations."""
    from sluice.db import app_conninfo, migrate, server_dsn_summary, tune_embedded

    settings = _settings()
    migrate(settings)
    sizes = tune_embedded(settings)
    if sizes:
        console.print("embedded server sized to this machine: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    console.print(f"database ready: {server_dsn_summary(app_conninfo(settings))}", soft_wrap=True)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    from sluice.db import stop_embedded

    console.print("stopped" if stop_embedded(_settings()) else "not running")


@db_app.command("url")
def db_url(admin: Annotated[bool, typer.Option(help="Print the admin URL instead.")] = False) -> None:
    """Print the connection string the application (or, with --admin, migrations) uses."""
    from sluice.db import admin_conninfo, app_conninfo

    settings = _settings()
    console.print(admin_conninfo(settings) if admin else app_conninfo(settings), soft_wrap=True)


@tenant_app.command("create")
def tenant_create(tenant: str, name: Annotated[str, typer.Option(help="Display name.")] = "") -> None:
    """Create a tenant."""
    from sluice.db import create_tenant

    with _database(_settings()) as db:
        created = create_tenant(db, tenant, name)
    console.print(f"tenant {tenant!r} {'created' if created else 'already exists'}")


CollectionOpt = Annotated[Optional[str], typer.Option("--collection", help="Collection within the tenant.")]
FilterOpt = Annotated[Optional[str], typer.Option("--filter", help='Metadata filter as JSON, e.g. {"doc.lang": "en"}.')]


@app.command()
def query(
    question: str,
    tenant: TenantOpt,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="Answer from this config's index (an experiment).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    collection: CollectionOpt = None,
    filter_json: FilterOpt = None,
) -> None:
    """Answer QUESTION from the tenant's documents (its served config and index), with citations."""
    from tasks.answer import answer_question
    from tasks.embed import get_embedder
    from tasks.routed import answerer_for

    settings = _settings()
    with _database(settings) as db:
        pipeline = _query_config(settings, db, tenant, collection, config)
        embedder = get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir)
        with closing(answerer_for(settings, pipeline, embedder)) as answerer:
            filters = cli_retrieval.parse_filter(filter_json)
            result = answer_question(
                db, tenant, pipeline, embedder, question, filters=filters, collection=collection, answerer=answerer
            )
    if as_json:
        print(json.dumps({"question": result.question, **result.to_json()}, indent=2))
    else:
        _print_answer(result)


def _query_config(settings: Settings, db, tenant: str, collection: str | None, path: Path | None):
    """The tenant's served config, or with --config that config (said on stderr: it is not what is served)."""
    from sluice.config import load_config
    from sluice.served import served

    serving = served(settings, db, tenant, collection or "default")
    if path is None:
        return serving.config
    pipeline = load_config(path)
    if pipeline.index_id != serving.index_id:
        err_console.print(
            f"experiment: answering from index {pipeline.index_id} of {path}; tenant {tenant} is served by index "
            f"{serving.index_id}",
            soft_wrap=True,
        )
    return pipeline


def _print_answer(result) -> None:
    console.print(f"[bold]Q:[/] {result.question}")
    console.print(f"[bold]A:[/] {result.answer.text}")
    for n, cite in enumerate(result.answer.citations, 1):
        console.print(f"   [{n}] {cite.source_id} chars {cite.start}-{cite.end} (score {cite.score:.2f})")
    if result.reranker:
        console.print(f"   reranked by {result.reranker} (scores are the rerank model's)")
    a = result.answer
    if a.model != "extractive":
        route = f", routed by {result.route.policy}: {result.route.reason}" if result.route else ""
        console.print(
            f"   model {a.model} (tier {a.tier}), TTFT {a.ttft_ms:.0f} ms, {a.usage.prompt_tokens}+"
            f"{a.usage.completion_tokens} tokens, ${a.cost_usd:.6f}{route}"
        )


@app.command()
def demo() -> None:
    """Start the database, ingest the sample corpus into tenant 'demo', answer the sample questions."""
    from sluice.db import Database, create_tenant, migrate
    from sluice.served import served
    from tasks.answer import answer_question
    from tasks.embed import get_embedder
    from tasks.ingest import ingest_source
    from tasks.ingest_served import ingest_served

    settings = _settings()
    migrate(settings)
    with Database(settings) as db:
        create_tenant(db, "demo", "Demo tenant")

        def once(pipeline, embedder):
            return ingest_source(db, "demo", pipeline, embedder, SAMPLE_CORPUS, settings.max_file_bytes)

        run = ingest_served(settings, db, "demo", "default", once)
        print_summary(run.summary, run.index_id)
        pipeline = served(settings, db, "demo").config
        embedder = get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir)
        for line in SAMPLE_GOLD.read_text().splitlines():
            item = json.loads(line)
            _print_answer(answer_question(db, "demo", pipeline, embedder, item["question"]))
            console.print()


def main() -> None:
    """Entry point of the `sluice` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
