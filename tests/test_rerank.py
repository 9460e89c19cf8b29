"""The rerank stage end to end: a cross-encoder built here from the packaged MiniLM weights (no download).

Its classification head is freshly initialised (seeded), so its ranking is arbitrary but fixed: the tests
check the stage's mechanics (candidates, order, determinism, identity), never its quality.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from evals.grid import expand, load_grid
from sluice.config import parse_config
from sluice.errors import ConfigError
from tasks.embed import resolve_model_path
from tasks.rerank import RERANKERS, get_reranker, resolve_reranker_path
from tests.conftest import SAMPLE

pytestmark = pytest.mark.usefixtures("no_champion_left")

FACTS = [
    "Otters eat fish and crabs in cold rivers.",
    "Beavers build dams from sticks and mud.",
    "Herons stand still in shallow water waiting for fish.",
    "Kingfishers dive from branches to catch small fish.",
    "Salmon swim upstream to spawn in gravel beds.",
    "Trout prefer cool, well-oxygenated streams.",
    "Dippers walk underwater along stream beds hunting larvae.",
    "Mink are agile hunters of fish, birds and voles.",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    """A CrossEncoder made from all-MiniLM-L6-v2 with a seeded head, saved to a folder."""
    import torch
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(0)
    model = CrossEncoder(str(resolve_model_path("all-MiniLM-L6-v2")), num_labels=1, device="cpu", local_files_only=True)
    model.save_pretrained(str(folder))
    return folder


def _configs(cross_encoder, k: int = 4, top_n: int = 8):
    plain = parse_config(
        {"chunker": {"kind": "recursive", "chunk_size": 200, "chunk_overlap": 0}, "retrieval": {"k": k}}
    )
    rerank = {"kind": "cross_encoder", "model": str(cross_encoder), "top_n": top_n, "batch_size": 3}
    return plain, plain.model_copy(update={"rerank": parse_config({"rerank": rerank}).rerank})


def test_rerank_reorders_the_fused_candidates_deterministically(db, new_tenant, embedder, cross_encoder):
    from sentence_transformers import CrossEncoder

    from tasks.answer import answer_question
    from tasks.ingest_text import ingest_texts

    tenant = new_tenant()
    plain, reranked = _configs(cross_encoder)
    assert plain.index_id == reranked.index_id and plain.config_id != reranked.config_id
    docs = [(f"facts/{i}.txt", fact) for i, fact in enumerate(FACTS)]
    assert ingest_texts(db, tenant, plain, embedder, docs).ingested == len(FACTS)
    question = "Which animals hunt fish?"
    wide = answer_question(
        db,
        tenant,
        plain.model_copy(update={"retrieval": plain.retrieval.model_copy(update={"k": 8})}),
        embedder,
        question,
    )
    first = answer_question(db, tenant, reranked, embedder, question)
    again = answer_question(db, tenant, reranked, embedder, question)
    # Independently: the saved model's scores of every candidate, best first, give the reranked top 4.
    reference = CrossEncoder(str(cross_encoder), device="cpu", local_files_only=True)
    scores = reference.predict([(question, h.text) for h in wide.hits])
    expected = [h.source_id for _, h in sorted(zip(-scores, wide.hits, strict=True), key=lambda p: p[0])][:4]
    assert [h.source_id for h in first.hits] == expected == [h.source_id for h in again.hits]
    dense_top = [h.source_id for h in wide.hits[:4]]
    assert [h.source_id for h in first.hits] != dense_top, "the rerank stage must change the order"
    assert [h.score for h in first.hits] == sorted(h.score for h in first.hits)[::-1]
    weights = hashlib.sha256((cross_encoder / "model.safetensors").read_bytes()).hexdigest()
    assert first.reranker == f"{cross_encoder}@{weights[:16]}"
    assert get_reranker(reranked.rerank).identity.weights_hash == weights
    assert get_reranker(reranked.rerank) is get_reranker(reranked.rerank), "one model per process"


def test_a_model_that_is_not_local_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="save_pretrained"):
        resolve_reranker_path("nobody/no-such-cross-encoder")
    assert RERANKERS.names() == ["cross_encoder"]


@pytest.fixture()
def eval_settings(migrated, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("SLUICE_MLFLOW_TRACKING_URI", uri)
    return migrated.model_copy(update={"mlflow_tracking_uri": uri, "mlflow_artifact_dir": tmp_path / "artifacts"})


def test_grid_with_a_rerank_axis_runs_and_records_the_model(eval_settings, db, cross_encoder, tmp_path):
    from evals import tracking
    from evals.evaluate import run_evaluation

    gold = [json.loads(line) for line in (SAMPLE / "gold.jsonl").read_text().splitlines() if line.strip()]
    gold = [g for g in gold if all(e["source_id"].endswith(".md") for e in g["evidence"])]
    (tmp_path / "gold.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gold))
    grid_file = tmp_path / "rerank.yaml"
    grid_file.write_text(
        json.dumps(
            {
                "name": "rerank",
                "tenant": "eval-rerank",
                "corpus": {"kind": "files", "path": str(SAMPLE / "corpus" / "*.md")},
                "gold": str(tmp_path / "gold.jsonl"),
                "chunkers": [{"kind": "recursive", "chunk_size": 300, "chunk_overlap": 0}],
                "retrieval": [{"mode": "hybrid", "k": 5}],
                "rerank": [None, {"kind": "cross_encoder", "model": str(cross_encoder), "top_n": 10}],
                "objective": {"metric": "ndcg_at_10", "max_cost_per_answer": 1.0, "max_p95_latency_ms": 600000},
                "promotion": {"n_boot": 200},
            }
        )
    )
    grid = load_grid(grid_file)
    plain, reranked = expand(grid)
    assert plain.rerank is None and reranked.rerank is not None and plain.index_id == reranked.index_id
    assert "cross_encoder(top_n=10)" in reranked.name
    report = run_evaluation(eval_settings, db, grid, promote=False)
    assert [r.config.config_id for r in report.results] == [plain.config_id, reranked.config_id]
    assert all(r.summary["questions"] == len(gold) for r in report.results)
    first_ids = [[h.source_id for h in r.hits] for r in report.results[0].records]
    assert first_ids != [[h.source_id for h in r.hits] for r in report.results[1].records]
    mlc = tracking.client(eval_settings)
    tags = mlc.get_run(report.results[1].run_id).data.tags
    assert tags["rerank.model"] == str(cross_encoder) and len(tags["rerank.weights_hash"]) == 64
    assert "rerank.model" not in mlc.get_run(report.results[0].run_id).data.tags
    assert "truncated_chunks" in mlc.get_run(report.results[0].run_id).data.metrics


@pytest.fixture(scope="module")
def reranking_stack(stack_settings, start_stack, db, embedder, cross_encoder):
    """A worker and `sluice serve` whose served config reranks; one tenant with FACTS: (stack, key, config)."""
    from sluice.config import load_config
    from tasks.ingest_text import ingest_texts
    from tests.serving_support import keyed_tenant

    settings = stack_settings("rerank-api")
    rerank = {"kind": "cross_encoder", "model": str(cross_encoder), "top_n": 8}
    settings.config_path.write_text(
        json.dumps({"name": "rerank-api", "retrieval": {"k": 4}, "chunker": {"kind": "recursive"}, "rerank": rerank})
    )
    config = load_config(settings.config_path)
    tenant, key = keyed_tenant(db, "rerank")
    docs = [(f"facts/{i}.txt", fact) for i, fact in enumerate(FACTS)]
    assert ingest_texts(db, tenant, config, embedder, docs).ingested == len(FACTS)
    return start_stack(settings, api_process=True), tenant, key, config


def test_the_reranker_is_in_every_answer_and_search_response(reranking_stack, sluice_cli, tmp_path):
    """API /v1/query (and its OpenAPI schema), MCP answer and search, `sluice query --json` name the model."""
    import anyio

    from serving.schemas import QueryResponse
    from tests.mcp_support import call, http_session

    stack, tenant, key, config = reranking_stack
    identity = get_reranker(config.rerank).identity.key
    question = "Which animals hunt fish?"
    with stack.client(key, timeout=180) as client:
        rest = client.post("/v1/query", json={"question": question})
        schema = client.get("/openapi.json").json()["components"]["schemas"]["QueryResponse"]
    assert rest.status_code == 200, rest.text
    assert rest.json()["reranker"] == identity == QueryResponse.model_validate(rest.json()).reranker
    assert "reranker" in schema["properties"]

    async def mcp_side() -> tuple[dict, dict]:
        async with http_session(stack.url, key) as session:
            return await call(session, "answer", question=question), await call(session, "search", query=question)

    answer, found = anyio.run(mcp_side)
    assert answer["reranker"] == identity == found["reranker"]
    # The search's scores are the cross-encoder's: the same model scores the returned chunks alike.
    scores = get_reranker(config.rerank).scores(question, [c["text"] for c in found["chunks"]])
    assert [c["score"] for c in found["chunks"]] == pytest.approx([float(s) for s in scores], abs=1e-5)
    cli = sluice_cli("query", question, "-t", tenant, "-c", stack.settings.config_path, "--json")
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["reranker"] == identity
