"""What `sluice eval` prints: a table on a wide terminal, a block per config in a log, the full table in a file.

An 11-column table squeezed into a log's 80 columns breaks every number over several lines, so a
log gets one block per config (its name, ids and metrics as `key value` pairs) and the full table
goes to a Markdown file the output names.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

WIDTH = 80  # a block's lines stay within this many columns (a config's name excepted)
SHORT = {
    "hit_at_5": "hit@5",
    "ndcg_at_10": "nDCG@10",
    "evidence_recall_at_5": "ev.rec@5",
    "semantic_similarity": "sem.sim",
    "rouge_l": "ROUGE-L",
    "latency_total_p95_ms": "p95 ms",
    "cost_per_answer": "cost/ans",
    "faithfulness": "faithful",
    "answer_relevancy": "ans.rel",
    "llm_context_precision": "ctx.prec",
    "judge_failure_share_faithfulness": "judge fail faithful",
    "judge_failure_share_answer_relevancy": "judge fail ans.rel",
    "judge_failure_share_llm_context_precision": "judge fail ctx.prec",
}


def fmt(value) -> str:
    """A metric as the report shows it: 4 decimals below 10, whole numbers above, a dash for none."""
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.0f}"
    return "—" if value is None else str(value)


def metric_pairs(data: dict[str, list], metric: str, i: int) -> list[tuple[str, str]]:
    """Config `i`'s (label, value) pairs: the objective with its CI first, then every other column."""
    others = [c for c in data if c not in ("config_id", "name", metric, f"{metric}_ci")]
    first = (SHORT.get(metric, metric), f"{fmt(data[metric][i])} {data[f'{metric}_ci'][i]}")
    return [first, *((SHORT.get(c, c), fmt(data[c][i])) for c in others)]


def print_comparison(out: Console, report, spec, data: dict[str, list], full_table: Path) -> None:
    """The comparison: the table when the terminal is wide enough for it, else a block per config."""
    title = f"evaluation {spec.name}: {spec.objective.direction} {spec.objective.metric}"
    table = _table(report, spec, data, title)
    # Measured without the console's width as a cap: the width the table needs to show whole.
    needs = Measurement.get(out, out.options.update(max_width=10_000), table).maximum
    if out.is_terminal and needs <= out.width:
        out.print(table)
        for i, result in enumerate(report.results, 1):
            out.print(f"  {i}: {result.config.name}  (config {result.config.config_id}, run {result.run_id})")
    else:
        out.print(f"{title} ({len(report.results)} configs)", highlight=False)
        for i, result in enumerate(report.results):
            out.print("\n".join(config_block(i, result, data, spec.objective.metric)), highlight=False, soft_wrap=True)
    out.print(f"full table: {full_table}", soft_wrap=True, highlight=False)


def _table(report, spec, data: dict[str, list], title: str) -> Table:
    table = Table(title=title)
    pairs = [metric_pairs(data, spec.objective.metric, i) for i in range(len(report.results))]
    for col in ("#", "config", *(label for label, _ in pairs[0])) if pairs else ("#", "config"):
        table.add_column(col)
    for i, row in enumerate(pairs):
        table.add_row(str(i + 1), data["config_id"][i][:8], *(value for _, value in row))
    return table


def config_block(i: int, result, data: dict[str, list], metric: str) -> list[str]:
    """Config `i` as lines for a log: number and name, ids, then its metrics packed into WIDTH columns."""
    lines = [f"{i + 1}. {result.config.name}", f"   config {result.config.config_id}  run {result.run_id}"]
    line = "  "
    for label, value in metric_pairs(data, metric, i):
        item = f" {label} {value}"
        if len(line) + len(item) > WIDTH and line.strip():
            lines.append(line)
            line = "  "
        line += item + " ·"
    lines.append(line)
    return [ln.removesuffix(" ·") for ln in lines]


def write_full_table(folder: Path, report, spec, data: dict[str, list]) -> Path:
    """Every column of every config as a Markdown table in `folder`, named by grid and parent run; its path."""
    name = re.sub(r"[^\w.-]", "_", spec.name)
    path = folder / f"{name}-{report.parent_run_id[:8]}.md"
    metric = spec.objective.metric
    labels = [label for label, _ in metric_pairs(data, metric, 0)] if report.results else []
    lines = [
        f"# evaluation {spec.name}: {spec.objective.direction} {metric}",
        "",
        "| # | config | name | run | " + " | ".join(labels) + " |",
        "|---" * (4 + len(labels)) + "|",
    ]
    for i, result in enumerate(report.results):
        values = [value for _, value in metric_pairs(data, metric, i)]
        cells = [str(i + 1), result.config.config_id, result.config.name, str(result.run_id), *values]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def verdict(report, spec, champion_id: str | None) -> str:
    """One line: which config (id and parts) is champion after this evaluation, and why."""
    decision, metric = report.decision, spec.objective.metric
    if report.promoted is None:
        names = {r.config.config_id: r.config.name for r in report.results}
        if decision.promote:
            return f"not promoted (--no-promote): {decision.reason}"
        if champion_id is None:
            return f"no champion: {decision.reason}"
        named = f"config {champion_id}" + (f", {names[champion_id]}" if champion_id in names else "")
        return f"champion unchanged: {named}: {decision.reason}"
    winner = decision.winner
    if decision.mean_diff is None:
        why = f"there was no champion yet, and it scores the best {metric} ({fmt(winner.summary.get(metric))})"
        why += " of the configs within budget"
    else:
        why = f"it beats the previous champion on {metric} by {decision.mean_diff:+.4f} (p={decision.p_value:.4f})"
    return f"new champion: config {winner.config_id}, {winner.name}: {why}"
