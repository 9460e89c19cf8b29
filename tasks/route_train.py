"""Train the classifier router from evaluation results and calibrate it to a large-tier share or budget.

Label per question: 1 when the small tier answered as well as the large one (its score is within
`tolerance` of the large tier's), else 0. The model predicts P(label = 1) from the query embedding;
the threshold is chosen so that the wanted share of questions goes to the large tier.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sluice.errors import RouterError
from tasks.route import RouterModel, file_sha256


@dataclass(frozen=True)
class EvalRow:
    question: str
    small_ok: bool
    small_cost: float | None = None
    large_cost: float | None = None


def parse_eval_row(obj: dict[str, Any], tolerance: float, where: str) -> EvalRow:
    """Read one evaluation result: either `small_ok`, or `small_score` and `large_score`."""
    if "question" not in obj:
        raise RouterError(f"{where}: missing 'question'; each line needs question + small_ok or both scores")
    if "small_ok" in obj:
        ok = bool(obj["small_ok"])
    elif "small_score" in obj and "large_score" in obj:
        ok = float(obj["small_score"]) >= float(obj["large_score"]) - tolerance
    else:
        raise RouterError(f"{where}: needs 'small_ok' or both 'small_score' and 'large_score'")
    return EvalRow(str(obj["question"]), ok, obj.get("small_cost_usd"), obj.get("large_cost_usd"))


def read_eval_rows(path: Path, tolerance: float = 0.0) -> list[EvalRow]:
    """Load evaluation results from JSON lines."""
    if not path.is_file():
        raise RouterError(f"evaluation results {str(path)!r} do not exist: pass a JSONL file of per-question scores")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise RouterError(f"{path}:{n}: not JSON ({exc})") from exc
            rows.append(parse_eval_row(obj, tolerance, f"{path}:{n}"))
    return rows


def large_share_for_budget(budget: float, small_cost: float, large_cost: float) -> float:
    """The large-tier share that spends `budget` per question on average (clamped to [0, 1])."""
    if large_cost <= small_cost:
        raise RouterError(f"large-tier cost {large_cost} is not above small-tier cost {small_cost}: nothing to save")
    return float(np.clip((budget - small_cost) / (large_cost - small_cost), 0.0, 1.0))


def calibrate_threshold(p_small: np.ndarray, large_share: float) -> float:
    """Threshold below which `large_share` of these probabilities fall."""
    if large_share <= 0:
        return 0.0
    if large_share >= 1:
        return 1.0 + 1e-9
    return float(np.quantile(p_small, large_share, method="midpoint"))


def train_router(vectors: np.ndarray, labels: np.ndarray, large_share: float, embedder_key: str) -> RouterModel:
    """Fit k fold models, average them, and place the threshold on their out-of-fold scores.

    The averaged model scores new questions the way each fold model scored its unseen fold, so a
    threshold at the `large_share` quantile of out-of-fold scores carries over to new questions;
    a model refit on everything would be more confident than the scores the threshold came from.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 3:
        raise RouterError(
            f"training needs at least 3 questions of each label; got {counts[1]} small-ok and {counts[0]} "
            "large-needed: add evaluation results"
        )
    oof = np.zeros(len(labels))
    coefs, intercepts = [], []
    folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=0)
    for train, test in folds.split(vectors, labels):
        fold = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(vectors[train], labels[train])
        oof[test] = fold.predict_proba(vectors[test])[:, 1]
        coefs.append(fold.coef_[0])
        intercepts.append(fold.intercept_[0])
    meta = {
        "embedder": embedder_key,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": int(len(labels)),
        "small_ok": int(counts[1]),
        "large_share": large_share,
        "folds": len(coefs),
    }
    coef = np.mean(coefs, axis=0).astype(np.float32)
    return RouterModel(coef, float(np.mean(intercepts)), calibrate_threshold(oof, large_share), embedder_key, meta)


def save_router_model(model: RouterModel, folder: Path) -> tuple[Path, str]:
    """Write the model as .npz (no pickle) named by its hash; return the path and sha256."""
    buf = io.BytesIO()
    np.savez(
        buf,
        coef=model.coef,
        intercept=np.float64(model.intercept),
        threshold=np.float64(model.threshold),
        meta=np.str_(json.dumps(model.meta, sort_keys=True)),
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".router.tmp"
    tmp.write_bytes(buf.getvalue())
    sha = file_sha256(tmp)
    path = folder / f"router-{sha[:16]}.npz"
    tmp.replace(path)
    return path, sha
