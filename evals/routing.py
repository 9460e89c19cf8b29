"""Routing policies in an evaluation: each policy's quality, share of calls per tier, cost and latency.

Per config, `routing_metrics` turns the generated answers into columns (`tier_share_<tier>`,
`fallback_rate`). Across configs, `routing_rows` compares each policy with the config that sends every
question to the large tier on the same index and retrieval (the "all-large" baseline), which gives a
headline such as "rules: 70% small, cost −55%, nDCG unchanged, answer similarity −0.01".
"""

from __future__ import annotations

import math
from typing import Any

from evals.results import ConfigResult
from sluice.config import OpenAIGenerator, PipelineConfig, SingleRouting
from tasks.generate import Answer
from tasks.routed import routing_summary

TIER_SHARE = "tier_share_"
QUALITY = ("semantic_similarity", "rouge_l")  # answer quality next to the grid's objective metric


def routing_metrics(answers: list[Answer]) -> dict[str, float]:
    """Share of calls per tier (the tier that answered) and the share of answers that needed a fallback."""
    summary = routing_summary(answers)
    if not summary["n"]:
        return {}
    out = {f"{TIER_SHARE}{tier}": share for tier, share in summary["share"].items()}
    out["fallback_rate"] = summary["fallbacks"] / summary["n"]
    return out


def is_routed(results: list[ConfigResult]) -> bool:
    """True when some config generates with LLM tiers (otherwise there is nothing to compare)."""
    return any(isinstance(r.config.generator, OpenAIGenerator) for r in results)


def policy_label(config: PipelineConfig) -> str:
    """`rules`, `classifier`, or `all-<tier>` for a single-tier config."""
    routing = config.routing
    return f"all-{routing.tier}" if isinstance(routing, SingleRouting) else routing.policy


def baseline_tier(results: list[ConfigResult]) -> str | None:
    """The large tier the routed configs name (the one every question would otherwise go to)."""
    larges = [r.config.routing.large for r in results if not isinstance(r.config.routing, SingleRouting)]
    return larges[0] if larges else None


def baseline_of(result: ConfigResult, results: list[ConfigResult], tier: str) -> ConfigResult | None:
    """The all-`tier` config on the same index, retrieval and generator as `result`, if the grid has one."""
    for other in results:
        c, o = result.config, other.config
        same = (c.index_id, c.retrieval, c.generator) == (o.index_id, o.retrieval, o.generator)
        if same and o.routing == SingleRouting(tier=tier):
            return other
    return None


def routing_rows(results: list[ConfigResult], metric: str) -> list[dict[str, Any]]:
    """One row per config: policy, quality, share per tier, cost, latency, and changes against all-large."""
    tier = baseline_tier(results)
    tiers = sorted({k.removeprefix(TIER_SHARE) for r in results for k in r.summary if k.startswith(TIER_SHARE)})
    rows = []
    for r in results:
        s = r.summary
        row: dict[str, Any] = {"config_id": r.config.config_id, "name": r.config.name}
        row["policy"] = policy_label(r.config)
        row.update({m: s.get(m, math.nan) for m in (metric, *QUALITY)})
        row.update({f"share_{t}": s.get(f"{TIER_SHARE}{t}", 0.0) for t in tiers})
        row["cost_per_answer"] = s["cost_per_answer"]
        for key in ("latency_ttft_p50_ms", "latency_total_p50_ms", "latency_total_p95_ms", "fallback_rate"):
            row[key] = s.get(key, math.nan)
        base = baseline_of(r, results, tier) if tier else None
        if base is not None:
            row.update(_against(s, base.summary, metric, tier))
        rows.append(row)
    return rows


def _against(summary: dict[str, float], base: dict[str, float], metric: str, tier: str) -> dict[str, float]:
    cost, base_cost = summary["cost_per_answer"], base["cost_per_answer"]
    out = {f"cost_change_vs_all_{tier}": cost / base_cost - 1 if base_cost > 0 else math.nan}
    for m in (metric, *QUALITY):
        out[f"{m}_change_vs_all_{tier}"] = summary.get(m, math.nan) - base.get(m, math.nan)
    return out


def describe(row: dict[str, Any], metric: str) -> str:
    """A one-line summary, e.g. 'rules: 62% small, 38% large, cost -55% vs all-large, ndcg_at_10 +0.000, ...'."""
    shares = ", ".join(f"{v:.0%} {k.removeprefix('share_')}" for k, v in row.items() if k.startswith("share_") and v)
    parts = [f"{row['policy']}: {shares or 'no tier'}"]
    change = next((k for k in row if k.startswith("cost_change_vs_")), None)
    if change is not None:
        suffix = change.removeprefix("cost_change_vs_")  # all_<tier>
        parts.append(f"cost {row[change]:+.0%} vs {suffix.replace('_', '-', 1)}")
        parts += [f"{m} {row[f'{m}_change_vs_{suffix}']:+.3f}" for m in (metric, *QUALITY)]
    parts.append(f"cost/answer ${row['cost_per_answer']:.6f}, p50 {row['latency_total_p50_ms']:.0f} ms")
    return ", ".join(parts)
