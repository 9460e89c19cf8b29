"""Write an evaluation to MLflow: a parent run, a nested run per config, tables and plots."""

from __future__ import annotations

from evals import plots, routing, tracking
from evals.grid import Decision, Grid, budget_violation
from evals.results import ConfigResult
from evals.runner import DISPLAY
from sluice.settings import Settings

JUDGE_SHARE = "judge_failure_share_"


def question_table(result: ConfigResult) -> dict[str, list]:
    """One row per question: texts, retrieved spans, every score, latency, tokens, cost."""
    names = sorted({n for r in result.records for n in r.scores})
    table: dict[str, list] = {k: [] for k in ("question_id", "question", "reference", "answer", "retrieved")}
    table.update({n: [] for n in names})
    table.update({"latency_total_ms": [], "tokens_in": [], "tokens_out": [], "cost": []})
    table.update({"tier": [], "model": [], "ttft_ms": [], "failure": [], "judge_failures": []})
    for r in result.records:
        table["question_id"].append(r.item.id)
        table["question"].append(r.item.question)
        table["reference"].append(r.item.reference)
        table["answer"].append(r.answer)
        table["retrieved"].append("; ".join(f"{h.source_id}:{h.start}-{h.end}" for h in r.hits))
        for n in names:
            table[n].append(r.scores.get(n))
        table["latency_total_ms"].append(r.timings_ms.get("total"))
        table["tokens_in"].append(r.tokens_in)
        table["tokens_out"].append(r.tokens_out)
        table["cost"].append(r.cost)
        table["tier"].append(r.generation.tier if r.generation else None)
        table["model"].append(r.generation.model if r.generation else None)
        table["ttft_ms"].append(r.generation.ttft_ms if r.generation else None)
        table["failure"].append(r.failure)
        table["judge_failures"].append("; ".join(f"{k}: {v}" for k, v in sorted(r.judge_failures.items())) or None)
    return table


def _config_metrics(result: ConfigResult) -> dict[str, float]:
    metrics = dict(result.summary)
    for name, (lo, hi) in result.cis.items():
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = lo, hi
    return metrics


def rerank_tags(config) -> dict[str, str]:
    """The rerank model's identity (as the index records the embedder's), or nothing without a rerank stage."""
    if config.rerank is None:
        return {}
    from tasks.rerank import get_reranker  # loaded already: the config's questions were answered with it

    identity = get_reranker(config.rerank).identity
    return {
        "rerank.kind": config.rerank.kind,
        "rerank.model": identity.model,
        "rerank.weights_hash": identity.weights_hash,
    }


def log_config_run(mlc, exp_id: str, parent_id: str, grid: Grid, result: ConfigResult) -> str:
    """One nested run: the config, every metric with its CI, the per-question table."""
    config = result.config
    skipped = ",".join(result.skipped) or "none"
    tags = {"config_id": config.config_id, "index_id": config.index_id, "ragas.skipped": skipped}
    if result.skipped:
        tags["ragas.skipped_reason"] = "no judge endpoint: set SLUICE_JUDGE_BASE_URL to an OpenAI-compatible URL"
    violation = budget_violation(result.summary, grid.objective)
    tags["feasible"] = "yes" if violation is None else f"no: {violation}"
    tags.update(rerank_tags(config))
    run_id = tracking.start_run(mlc, exp_id, config.name, tags, parent_id)
    tracking.log_config(mlc, run_id, config)
    tracking.log_metrics(mlc, run_id, _config_metrics(result))
    mlc.log_table(run_id, question_table(result), "per_question.json")
    tracking.end_run(mlc, run_id)
    return run_id


def judged_columns(results: list[ConfigResult]) -> list[str]:
    """Each judged metric that ran, followed by the share of questions its judge failed on."""
    shares = dict.fromkeys(k for r in results for k in r.summary if k.startswith(JUDGE_SHARE))
    return [col for share in shares for col in (share.removeprefix(JUDGE_SHARE), share)]


def comparison_table(results: list[ConfigResult], grid: Grid) -> dict[str, list]:
    """One row per config: id, name, objective with CI, display and judged metrics, p95 latency, cost, feasibility."""
    metric = grid.objective.metric
    cols = (
        "config_id",
        "name",
        metric,
        f"{metric}_ci",
        *DISPLAY,
        *judged_columns(results),
        "latency_total_p95_ms",
        "cost_per_answer",
        "feasible",
    )
    table: dict[str, list] = {c: [] for c in dict.fromkeys(cols)}
    for r in results:
        lo, hi = r.cis.get(metric, (float("nan"), float("nan")))
        row = {"config_id": r.config.config_id, "name": r.config.name, f"{metric}_ci": f"[{lo:.3f}, {hi:.3f}]"}
        row["feasible"] = budget_violation(r.summary, grid.objective) or "yes"
        for col in table:
            table[col].append(row.get(col, r.summary.get(col)))
    return table


def log_plots(mlc, run_id: str, grid: Grid, results: list[ConfigResult]) -> None:
    """Metric bars with CIs, quality vs cost with the Pareto front, chunk lengths per strategy."""
    names = [r.config.name for r in results]
    metric = grid.objective.metric
    shown = list(dict.fromkeys([metric, "hit_at_5", "mrr", "evidence_recall_at_5"]))
    means = {r.config.name: r.summary for r in results}
    cis = {r.config.name: r.cis for r in results}
    tracking.log_figure(mlc, run_id, plots.metric_bars(names, shown, means, cis), "plots/metric_bars.png")
    costs = [r.summary["cost_per_answer"] for r in results]
    quality = [r.summary.get(metric, float("nan")) for r in results]
    tracking.log_figure(mlc, run_id, plots.quality_vs_cost(names, costs, quality, metric), "plots/quality_vs_cost.png")
    lengths: dict[str, list[int]] = {}
    for r in results:
        label = " ".join(r.config.name.split(" ")[:1]) + f" [{r.config.index_id[:8]}]"
        lengths.setdefault(label, r.chunk_lengths)
    tracking.log_figure(mlc, run_id, plots.chunk_length_histograms(lengths), "plots/chunk_lengths.png")


def log_routing(mlc, run_id: str, grid: Grid, results: list[ConfigResult]) -> None:
    """Per routing policy: quality, share per tier, cost, latency, changes against all-large (LLM configs only)."""
    if not routing.is_routed(results):
        return
    rows = routing.routing_rows(results, grid.objective.metric)
    mlc.log_table(
        run_id, {k: [row.get(k) for row in rows] for k in dict.fromkeys(k for r in rows for k in r)}, "routing.json"
    )
    lines = "\n".join(routing.describe(row, grid.objective.metric) for row in rows)
    mlc.set_tag(run_id, "routing.summary", lines[:5000])


def open_evaluation(settings: Settings, grid: Grid, gold_label: str) -> str:
    """Create the parent run of an evaluation; config runs nest under it as they finish."""
    mlc = tracking.client(settings)
    exp_id = tracking.experiment_id(mlc, settings)
    tags = {"grid": grid.name, "tenant": grid.tenant, "gold": gold_label, "objective": grid.objective.metric}
    parent = tracking.start_run(mlc, exp_id, f"eval {grid.name}", tags)
    params = {"objective": grid.objective.model_dump(), "promotion": grid.promotion.model_dump()}
    tracking.log_params(mlc, parent, tracking.flatten(params))
    return parent


def log_result(settings: Settings, parent: str, grid: Grid, result: ConfigResult) -> str:
    """Log one config's nested run (as soon as it is scored, so a long grid keeps what it measured)."""
    mlc = tracking.client(settings)
    exp_id = mlc.get_run(parent).info.experiment_id
    result.run_id = log_config_run(mlc, exp_id, parent, grid, result)
    return result.run_id


def close_evaluation(
    settings: Settings, parent: str, grid: Grid, results: list[ConfigResult], decision: Decision
) -> None:
    """Add the comparison table, plots and decision to the parent run and finish it."""
    mlc = tracking.client(settings)
    mlc.log_table(parent, comparison_table(results, grid), "comparison.json")
    log_routing(mlc, parent, grid, results)
    log_plots(mlc, parent, grid, results)
    tags = {"decision.promote": str(decision.promote), "decision.reason": decision.reason[:5000]}
    if decision.winner:
        tags["decision.winner_config_id"] = decision.winner.config_id
    for key, value in tags.items():
        mlc.set_tag(parent, key, value)
    if decision.p_value is not None:
        stats = {"decision_p_value": decision.p_value, "decision_mean_diff": decision.mean_diff}
        tracking.log_metrics(mlc, parent, stats)
    tracking.end_run(mlc, parent)


def fail_evaluation(settings: Settings, parent: str) -> None:
    """Mark the parent run failed (its finished config runs stay)."""
    tracking.end_run(tracking.client(settings), parent, "FAILED")
