"""Per-head metrics (scikit-learn where it has them) and per-tag threshold tuning."""

from __future__ import annotations

from typing import Any

import numpy as np

from mhtag.data.schema import AttributeKind, LabelSchema

FLOOR_DRAWS = 200  # draws for the ECE a calibrated model would score; on 1,316 rows its p95 moves by up to .004
# between seeds and its mean by .002 (fashion12k val), precise enough to read an ECE against it


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, share correct and rows (empty bins: NaN, NaN, 0)."""
    which = _bin_of(confidence, bins)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct.astype(float), minlength=bins) / count
    return mean_conf, accuracy, count


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Each confidence's equal-width bin, 0 to bins - 1."""
    return np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)


def _ece_of(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    mean_conf, accuracy, count = reliability_bins(confidence, correct, bins)
    seen = count > 0
    return float((count[seen] * np.abs(accuracy[seen] - mean_conf[seen])).sum() / max(count.sum(), 1))


def calibrated_ece_draws(confidence: np.ndarray, bins: int = 15, draws: int = FLOOR_DRAWS, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consistency resampling (Broecker & Smith 2007): `draws` samples of what a perfectly calibrated forecaster
    with these confidences would show, each forecast coming true with exactly its confidence. Returns its ECE per
    draw, its share right per draw and non-empty bin (draws x bins), and which bins are non-empty."""
    rng = np.random.default_rng(seed)
    which = _bin_of(confidence, bins)
    mean_conf, _, count = reliability_bins(confidence, np.zeros(len(confidence), bool), bins)
    seen = count > 0
    mean_conf = mean_conf[seen]
    shares = np.empty((draws, int(seen.sum())))
    for d in range(draws):
        right = rng.random(len(confidence)) < confidence
        shares[d] = np.bincount(which, weights=right.astype(float), minlength=bins)[seen] / count[seen]
    eces = (count[seen] * np.abs(shares - mean_conf)).sum(1) / max(int(count.sum()), 1)
    return eces, shares, seen


def calibrated_ece_band(confidence: np.ndarray, bins: int = 15, draws: int = FLOOR_DRAWS, seed: int = 0
                        ) -> dict[str, Any]:
    """The ECE a perfectly calibrated model with these confidences scores on this many rows (mean and 95th
    percentile over `calibrated_ece_draws`), and per non-empty bin the 5-95% range of its share right. An ECE
    inside the band cannot be told apart from perfect calibration on this sample."""
    eces, shares, _ = calibrated_ece_draws(confidence, bins, draws, seed)
    low, high = np.quantile(shares, [0.05, 0.95], axis=0)
    return {"ece_floor": float(eces.mean()), "ece_floor_p95": float(np.quantile(eces, 0.95)),
            "band_low": [round(float(v), 4) for v in low], "band_high": [round(float(v), 4) for v in high]}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    return _ece_of(probs.max(1), probs.argmax(1) == y, bins)


def tag_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """A tag group's ECE: every (row, tag) is a yes/no forecast, p against whether the tag is there."""
    return _ece_of(probs.ravel(), y.astype(bool).ravel(), bins)


def _forecasts(probs: np.ndarray, y: np.ndarray, multi: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, right) pairs: a single-label head's top-1 on its labelled rows, or every (row, tag) of a group."""
    if multi:
        return probs.ravel(), y.astype(bool).ravel()
    keep = y >= 0
    return probs[keep].max(1), probs[keep].argmax(1) == y[keep]


def reliability_curve(probs: np.ndarray, y: np.ndarray, multi: bool, bins: int = 15) -> dict[str, Any]:
    """A reliability diagram's points (the non-empty bins: mean confidence, share right, rows), the ECE, and what
    a perfectly calibrated model with the same confidences would show (`calibrated_ece_band`)."""
    conf, right = _forecasts(probs, y, multi)
    mean_conf, accuracy, count = reliability_bins(conf, right, bins)
    seen = count > 0
    return {"confidence": [round(float(v), 4) for v in mean_conf[seen]],
            "accuracy": [round(float(v), 4) for v in accuracy[seen]],
            "count": [int(v) for v in count[seen]], "ece": _ece_of(conf, right, bins) if len(conf) else 0.0,
            **calibrated_ece_band(conf, bins)}


def calibration_errors(schema: LabelSchema, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]
                       ) -> dict[str, float]:
    """ECE per head on its labelled rows: top-1 confidence for a single-label head, every tag for a tag group."""
    return {a.name: reliability_curve(probs[a.name], targets[a.name], a.multi)["ece"] for a in schema.attributes}


def reliability_curves(schema: LabelSchema, targets: dict[str, np.ndarray], **versions: dict[str, np.ndarray]
                       ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per head, per version of the probabilities (e.g. before=..., after=...), its reliability curve."""
    return {a.name: {label: reliability_curve(probs[a.name], targets[a.name], a.multi)
                     for label, probs in versions.items()} for a in schema.attributes}


def _per_class(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, support, predicted count) per class, from one bincount."""
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    return np.diag(cm), cm.sum(1), cm.sum(0)


def _macro_f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> float:
    """scikit-learn's macro-F1: the mean over classes that occur in the truth or the predictions."""
    seen = (support + predicted) > 0
    return float((2 * tp[seen] / (support[seen] + predicted[seen])).mean()) if seen.any() else 0.0


def single_label_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """`y` holds class indices; rows with a negative index (blank or unknown label) are left out. Computed from
    one confusion count (numpy), so per-epoch validation stays cheap; equal to scikit-learn's definitions."""
    valid = y >= 0
    probs, y = probs[valid], y[valid]
    if len(y) == 0:
        return {"kind": AttributeKind.SINGLE.value, "n": 0}
    k = probs.shape[1]
    pred = probs.argmax(1)
    tp, support, predicted = _per_class(y, pred, k)
    present = support > 0
    top3 = np.argpartition(-probs, min(3, k) - 1, axis=1)[:, :3] if k > 3 else None
    return {
        "kind": AttributeKind.SINGLE.value,
        "n": int(len(y)),
        "accuracy": float(tp.sum() / len(y)),
        # mean recall over the classes present: a prediction of a class absent from `y` is just an error
        "balanced_accuracy": float((tp[present] / support[present]).mean()),
        "macro_f1": _macro_f1(tp, support, predicted),
        # the same mean over the classes present in `y` only: one stray prediction of a class absent from a small
        # split otherwise adds a zero to a mean over few classes
        "macro_f1_true_classes": float((2 * tp[present] / (support[present] + predicted[present])).mean()),
        # with 3 classes or fewer, top-3 is trivially 1
        "top3_accuracy": float((top3 == y[:, None]).any(1).mean()) if top3 is not None else 1.0,
        "ece": expected_calibration_error(probs, y),
    }


def macro_f1_of(probs: np.ndarray, y: np.ndarray) -> float:
    """Macro-F1 of the argmax over the classes present in `y` or predicted (a score for tuning)."""
    return _macro_f1(*_per_class(y, probs.argmax(1), probs.shape[1])) if len(y) else 0.0


def average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's average precision, sum over distinct thresholds of (R_n - R_n-1) * P_n, for one tag."""
    order = np.argsort(-scores, kind="mergesort")
    s, hit = scores[order], y[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each run of equal scores
    tp = np.cumsum(hit)[last]
    precision = tp / (last + 1)
    recall = tp / max(int(hit.sum()), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multi_label_metrics(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """Micro/macro-F1 (zero when a tag has nothing to count), micro precision and recall, mAP over tags with a
    positive row, exact match and Hamming accuracy: the same numbers as scikit-learn's functions, without their
    per-call checks."""
    pred = probs >= thresholds
    y = y.astype(bool)
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    denom = 2 * tp + fp + fn
    per_tag = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    micro_denom = int(denom.sum())
    n_tp, n_pred, n_pos = int(tp.sum()), int(tp.sum() + fp.sum()), int(tp.sum() + fn.sum())
    has_pos = y.any(0)
    hamming = float((pred == y).mean()) if y.size else 0.0
    return {
        "kind": AttributeKind.MULTI.value,
        "n": int(len(y)),
        "micro_f1": 2 * n_tp / micro_denom if micro_denom else 0.0,
        "micro_precision": n_tp / n_pred if n_pred else 0.0,
        "micro_recall": n_tp / n_pos if n_pos else 0.0,
        "macro_f1": float(per_tag.mean()) if len(per_tag) else 0.0,
        "mAP": float(np.mean([average_precision(probs[:, t], y[:, t]) for t in np.flatnonzero(has_pos)]))
        if has_pos.any() else 0.0,
        "exact_match": float((pred == y).all(1).mean()) if len(y) else 0.0,
        "hamming_accuracy": hamming,
        "accuracy": hamming,
        "ece": tag_calibration_error(probs, y) if y.size else 0.0,
        "thresholds": [round(float(t), 4) for t in np.broadcast_to(thresholds, (y.shape[1],))],
    }


def tune_thresholds(probs: np.ndarray, y: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per tag, the threshold that maximises F1 on these rows (the lowest of equals); 0.5 for a tag with no
    positive row. All tags and thresholds at once: (rows, tags, thresholds) counts, no per-threshold calls."""
    grid = np.linspace(0.05, 0.95, 19) if grid is None else np.asarray(grid)
    pred = probs[:, :, None] >= grid[None, None, :]
    pos = y.astype(bool)[:, :, None]
    tp = (pred & pos).sum(0)
    fp = (pred & ~pos).sum(0)
    fn = (~pred & pos).sum(0)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)
    out = grid[f1.argmax(1)].astype(np.float32)
    out[y.sum(0) == 0] = 0.5
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
