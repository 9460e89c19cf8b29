"""`sluice router …`: train the classifier router and try routers on questions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from cli.common import console

router_app = typer.Typer(help="Model routing: train and inspect routers.", no_args_is_help=True)


@router_app.command("train")
def train(
    results: Annotated[
        Path, typer.Argument(help="JSONL: question + small_ok, or question + small_score + large_score.")
    ],
    large_share: Annotated[Optional[float], typer.Option(help="Target share of large-tier calls (0-1).")] = None,
    budget_usd: Annotated[Optional[float], typer.Option(help="Target mean cost per question (needs costs).")] = None,
    tolerance: Annotated[float, typer.Option(help="Small is 'as good' within this score margin.")] = 0.02,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline config to extend.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the config with classifier routing here.")] = None,
) -> None:
    """Train the classifier router on evaluation results; print (or write) the routing config that pins it."""
    from sluice.settings import load_settings
    from tasks.embed import get_embedder

    settings = load_settings()
    pipeline = _base_config(config or settings.config_path)
    embedder = get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir)
    routing = train_routing(results, embedder, large_share, budget_usd, tolerance, settings.data_dir)
    body = _with_routing(pipeline, routing) if out else None
    snippet = yaml.safe_dump({"routing": routing}, sort_keys=False)
    if out and body is not None:
        out.write_text(yaml.safe_dump(body, sort_keys=False))
        console.print(f"wrote {out} (config_id {_config_id(body)})")
    console.print(snippet, soft_wrap=True)


def _base_config(path: Path | None):
    from sluice.config import load_config

    return load_config(path)


def train_routing(
    results: Path, embedder, large_share: float | None, budget_usd: float | None, tolerance: float, data_dir: Path
) -> dict:
    """Train, save under data_dir/routers, and return the routing config mapping that pins the file."""
    import numpy as np

    from sluice.errors import RouterError
    from tasks.route_train import large_share_for_budget, read_eval_rows, save_router_model, train_router

    rows = read_eval_rows(results, tolerance)
    if (large_share is None) == (budget_usd is None):
        raise RouterError("pass exactly one of --large-share or --budget-usd")
    if budget_usd is not None:
        small = [r.small_cost for r in rows if r.small_cost is not None]
        large = [r.large_cost for r in rows if r.large_cost is not None]
        if not small or not large:
            raise RouterError(f"{results}: --budget-usd needs small_cost_usd and large_cost_usd on the lines")
        large_share = large_share_for_budget(budget_usd, float(np.mean(small)), float(np.mean(large)))
    assert large_share is not None
    if not 0.0 <= large_share <= 1.0:
        raise RouterError(f"--large-share {large_share} is outside [0, 1]")
    vectors = embedder.encode([r.question for r in rows])
    labels = np.array([r.small_ok for r in rows], dtype=int)
    model = train_router(vectors, labels, large_share, embedder.identity.key)
    path, sha = save_router_model(model, Path(data_dir) / "routers")
    rel = path.relative_to(data_dir) if path.is_relative_to(data_dir) else path
    return {"policy": "classifier", "model_path": str(rel), "model_sha256": sha}


def _with_routing(pipeline, routing: dict) -> dict:
    from sluice.config import parse_config

    body = pipeline.model_dump(mode="json")
    body["routing"] = {**routing, "small": "small", "large": "large"}
    parse_config(body, source="trained config")  # the generator must declare the small and large tiers
    return body


def _config_id(body: dict) -> str:
    from sluice.config import parse_config

    return parse_config(body).config_id


@router_app.command("explain")
def explain(
    question: str,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline config YAML.")] = None,
    tenant: Annotated[Optional[str], typer.Option("--tenant", "-t", help="Retrieve top-k for document rules.")] = None,
) -> None:
    """Show which tier the config's router picks for QUESTION, and why."""
    from sluice.settings import load_settings
    from tasks.route import build_router

    settings = load_settings()
    pipeline = _base_config(config or settings.config_path)
    needs_embedder = tenant is not None or pipeline.routing.policy == "classifier"
    embedder = _embedder(pipeline, settings) if needs_embedder else None
    vector = embedder.encode([question])[0] if embedder else None
    hits = _retrieve(settings, pipeline, tenant, vector) if tenant else []
    decision = build_router(pipeline.routing, embedder, settings.data_dir).route(question, hits, None, vector)
    console.print(f"[bold]{decision.tier}[/] ({decision.policy}): {decision.reason}; {decision.elapsed_ms:.3f} ms")


def _embedder(pipeline, settings):
    from tasks.embed import get_embedder

    return get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir)


def _retrieve(settings, pipeline, tenant: str, vector):
    from sluice.db import Database
    from tasks.retrieve import dense_search

    with Database(settings) as db, db.tenant(tenant) as conn:
        return dense_search(conn, pipeline.index_id, vector, pipeline.retrieval)
