"""Per-head metrics (scikit-learn where it has them) and per-tag threshold tuning."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from mhtag.data.schema import LabelSchema


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def single_label_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """`y` holds class indices; rows with a negative index (blank or unknown label) are left out."""
    valid = y >= 0
    probs, y = probs[valid], y[valid]
    if len(y) == 0:
        return {"kind": "single", "n": 0}
    pred = probs.argmax(1)
    k = probs.shape[1]
    return {
        "kind": "single",
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        # mean recall over the classes present: a prediction of a class absent from `y` is just an error
        "balanced_accuracy": float(skm.recall_score(y, pred, labels=np.unique(y), average="macro",
                                                    zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        # with 3 classes or fewer, top-3 is trivially 1
        "top3_accuracy": float(skm.top_k_accuracy_score(y, probs, k=3, labels=np.arange(k))) if k > 3 else 1.0,
        "ece": expected_calibration_error(probs, y),
    }


def macro_f1_of(probs: np.ndarray, y: np.ndarray) -> float:
    """Macro-F1 of the argmax over the classes present in `y` or predicted (a score for tuning)."""
    return float(skm.f1_score(y, probs.argmax(1), average="macro", zero_division=0)) if len(y) else 0.0


def multi_label_metrics(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    pred = (probs >= thresholds).astype(int)
    y = y.astype(int)
    has_pos = y.sum(0) > 0
    return {
        "kind": "multi",
        "n": int(len(y)),
        "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "mAP": float(skm.average_precision_score(y[:, has_pos], probs[:, has_pos], average="macro"))
        if has_pos.any() else 0.0,
        "exact_match": float(skm.accuracy_score(y, pred)),
        "hamming_accuracy": float(1 - skm.hamming_loss(y, pred)),
        "accuracy": float(1 - skm.hamming_loss(y, pred)),
        "thresholds": [round(float(t), 4) for t in np.broadcast_to(thresholds, (y.shape[1],))],
    }


def tune_thresholds(probs: np.ndarray, y: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per tag, the threshold that maximises F1 on these rows; 0.5 for a tag with no positive row."""
    grid = np.linspace(0.05, 0.95, 19) if grid is None else grid
    out = np.full(probs.shape[1], 0.5, dtype=np.float32)
    for t in range(probs.shape[1]):
        if y[:, t].sum() == 0:
            continue
        scores = [skm.f1_score(y[:, t], probs[:, t] >= g, zero_division=0) for g in grid]
        out[t] = grid[int(np.argmax(scores))]
    return out


def head_metrics(schema: LabelSchema, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                 thresholds: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {
        a.name: multi_label_metrics(probs[a.name], targets[a.name], thresholds[a.name]) if a.multi
        else single_label_metrics(probs[a.name], targets[a.name])
        for a in schema.attributes
    }


def mean_macro_f1(heads: dict[str, dict[str, Any]]) -> float:
    values = [m["macro_f1"] for m in heads.values() if "macro_f1" in m]
    return float(np.mean(values)) if values else 0.0
