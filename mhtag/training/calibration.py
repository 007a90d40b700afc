"""Calibration: one temperature per single-label head, fitted on validation rows after training, so that a
head's confidence means what it says (a 0.8 is right about 80% of the time), and per-tag Platt scaling for a tag
group where it helps on held-out validation rows."""

from __future__ import annotations

import numpy as np
import torch

from mhtag.data.schema import LabelSchema
from mhtag.models.tagger import Tagger
from mhtag.training.metrics import tune_thresholds


def fit_temperature(probs: np.ndarray, y: np.ndarray, max_iter: int = 100) -> float:
    """The T > 0 minimising the NLL of softmax(log(probs) / T) on rows with a label (y >= 0); 1.0 without any.
    log(probs) equals the logits up to a per-row constant, which softmax ignores."""
    keep = y >= 0
    if keep.sum() < 2:
        return 1.0
    logp = torch.from_numpy(np.log(np.clip(probs[keep], 1e-12, 1.0))).double()
    target = torch.from_numpy(y[keep]).long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logp / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): the same ranking, confidences sharpened (T < 1) or softened (T > 1)."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperatures(schema: LabelSchema, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]
                     ) -> dict[str, float]:
    """A temperature per single-label head (tag groups: `fit_tag_scaling`)."""
    return {a.name: round(fit_temperature(probs[a.name], targets[a.name]), 4)
            for a in schema.attributes if not a.multi}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_platt(probs: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per tag, (a, b) minimising the BCE of sigmoid(a * logit(p) + b), all tags at once. A tag whose rows are
    all one answer, or whose fitted slope is not positive (it would reverse the ranking), keeps (1, 0)."""
    z = torch.from_numpy(_logit(probs)).double()
    t = torch.from_numpy(y.astype(np.float64))
    log_a = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_a, b], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z * log_a.exp() + b, t, reduction="sum")
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b_ = log_a.detach().exp().numpy(), b.detach().numpy()
    both = (y.sum(0) > 0) & (y.sum(0) < len(y)) & np.isfinite(a) & np.isfinite(b_)
    return np.where(both, a, 1.0), np.where(both, b_, 0.0)


def apply_platt(probs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sigmoid(a * logit(p) + b) per tag: the same order within a tag (a > 0), probabilities that mean what they
    say. Also maps a tag's tuned threshold, so that its yes/no answers stay exactly as they were."""
    return _sigmoid(np.asarray(a) * _logit(np.asarray(probs, dtype=np.float64)) + np.asarray(b)).astype(np.float32)


def _bce(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def platt_helps(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> bool:
    """Whether per-tag scaling lowers the BCE of rows it was not fitted on (two halves of the validation rows,
    each scored with the other's fit): with few rows per tag it can overfit, and then it is left out."""
    if len(y) < 20:
        return False
    order = np.random.default_rng(seed).permutation(len(y))
    halves = order[: len(y) // 2], order[len(y) // 2:]
    scaled = raw = 0.0
    for fit_rows, score_rows in (halves, halves[::-1]):
        a, b = fit_platt(probs[fit_rows], y[fit_rows])
        scaled += _bce(apply_platt(probs[score_rows], a, b), y[score_rows])
        raw += _bce(probs[score_rows], y[score_rows])
    return scaled < raw


def fit_tag_scaling(schema: LabelSchema, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]
                    ) -> dict[str, tuple[list[float], list[float]]]:
    """Per tag group where it helps on held-out validation rows: per-tag Platt (a, b) fitted on all of them."""
    out = {}
    for a in schema.attributes:
        if a.multi and platt_helps(probs[a.name], targets[a.name]):
            slope, bias = fit_platt(probs[a.name], targets[a.name])
            out[a.name] = ([round(float(v), 5) for v in slope], [round(float(v), 5) for v in bias])
    return out


def tune_tag_thresholds(model: Tagger, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> None:
    """Set each tag group's per-tag thresholds to the ones that maximise F1 on these rows."""
    for a in model.schema.attributes:
        if a.multi:
            model.thresholds_[a.name] = tune_thresholds(probs[a.name], targets[a.name]).tolist()


def calibrate(model: Tagger, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fit `model`'s temperatures and tag scaling on its uncalibrated `probs` of validation rows (tuned thresholds
    are mapped with the scaling, so answers do not change); returns the calibrated probabilities."""
    model.temperatures_ = fit_temperatures(model.schema, probs, targets)
    model.platt_ = fit_tag_scaling(model.schema, probs, targets)
    out = dict(probs)
    for name, t in model.temperatures_.items():
        out[name] = apply_temperature(probs[name], t)
    for name, (a, b) in model.platt_.items():
        a, b = np.asarray(a), np.asarray(b)
        out[name] = apply_platt(probs[name], a, b)
        model.thresholds_[name] = apply_platt(np.asarray(model.thresholds_[name]), a, b).tolist()
    return out
