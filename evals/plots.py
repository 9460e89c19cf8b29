"""Evaluation plots (matplotlib, Agg backend): metric bars with CIs, quality vs cost Pareto, chunk lengths."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_bars(names: list[str], metrics: list[str], means: dict, cis: dict):
    """One panel per metric: a bar per config with its bootstrap confidence interval."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5 + 0.15 * len(names)), squeeze=False)
    x = np.arange(len(names))
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = np.array([means[n].get(metric, np.nan) for n in names])
        lo = np.array([cis[n].get(metric, (np.nan, np.nan))[0] for n in names])
        hi = np.array([cis[n].get(metric, (np.nan, np.nan))[1] for n in names])
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]), nan=0.0).clip(min=0)
        ax.bar(x, np.nan_to_num(vals), yerr=err, capsize=3, color="tab:blue")
        ax.set_title(metric)
        ax.set_xticks(x, [str(i + 1) for i in x])
        ax.set_xlabel("config #")
    fig.suptitle("mean per config, bootstrap CI")
    fig.text(0.01, 0.01, "\n".join(f"{i + 1}: {n}" for i, n in enumerate(names)), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.03 + 0.02 * len(names), 1, 1))
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower cost and higher quality, by cost."""
    front = []
    for i, (cost, quality) in enumerate(points):
        dominated = any(
            (c <= cost and q >= quality) and (c < cost or q > quality) for j, (c, q) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def quality_vs_cost(names: list[str], costs: list[float], quality: list[float], metric: str):
    """Scatter of quality against cost per answer, with the Pareto front drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(costs, quality, color="tab:blue")
    for i, (c, q) in enumerate(zip(costs, quality, strict=True)):
        ax.annotate(str(i + 1), (c, q), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(list(zip(costs, quality, strict=True)))
    ax.plot([costs[i] for i in front], [quality[i] for i in front], "r--", label="Pareto front")
    ax.set_xlabel("estimated cost per answer")
    ax.set_ylabel(metric)
    ax.legend()
    fig.text(0.01, 0.01, "\n".join(f"{i + 1}: {n}" for i, n in enumerate(names)), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.03 + 0.02 * len(names), 1, 1))
    return fig


def chunk_length_histograms(lengths: dict[str, list[int]]):
    """Histogram of chunk lengths (characters), one panel per chunking strategy (index)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(lengths), 1, figsize=(6, 2.2 * len(lengths)), squeeze=False)
    for ax, (label, values) in zip(axes[:, 0], lengths.items(), strict=True):
        ax.hist(values, bins=30, color="tab:green")
        ax.set_title(f"{label} (n={len(values)}, median={int(np.median(values)) if values else 0})", fontsize=8)
        ax.set_xlabel("chunk length (characters)")
    fig.tight_layout()
    return fig
