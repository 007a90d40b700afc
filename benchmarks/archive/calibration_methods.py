"""Is one temperature per head enough? Temperature scaling against vector scaling (a temperature, then a scale
and a bias per class, L2-regularised) and ensemble temperature scaling (`fit_ensemble`), on the validation split
only: each is fitted on one half of the val rows and scored (ECE, NLL, accuracy) on the other, over 5 random
halvings, both ways. Also the ECE each reaches on the rows it was fitted on (what calibration could do at best).
Writes benchmarks/results/calibration_methods.json.

    python benchmarks/calibration_methods.py --run runs/fashion_lpft
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mhtag.data.labels import FILE, drop_unreadable, read_labels
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.training.calibration import apply_temperature, fit_temperature
from mhtag.training.evaluate import tagger_probabilities
from mhtag.training.metrics import expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"


def fit_vector(probs: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray, np.ndarray]:
    """(T, per-class scale, per-class bias) minimising NLL + l2 * |log scale, bias|^2."""
    z = torch.log(torch.from_numpy(np.clip(probs, 1e-12, 1.0))).double()
    target = torch.from_numpy(y).long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    log_w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t, log_w, b], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * (log_t.exp() * log_w.exp()) + b, target)
        loss = loss + l2 * (log_w.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp()), log_w.detach().exp().numpy(), b.detach().numpy()


def apply_vector(probs: np.ndarray, params: tuple[float, np.ndarray, np.ndarray]) -> np.ndarray:
    t, w, b = params
    z = np.log(np.clip(probs, 1e-12, 1.0)) * t * w + b
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit_ensemble(probs: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Ensemble temperature scaling (Zhang, Kailkhura, Han, ICML 2020): T from temperature scaling, then the
    weights of w1 softmax(z / T) + w2 softmax(z) + w3 uniform minimising NLL. The three share one ranking, so
    no answer changes, yet it can both sharpen the unsure answers and cap the sure ones."""
    t = fit_temperature(probs, y)
    parts = torch.from_numpy(np.stack([apply_temperature(probs, t), probs, np.full_like(probs, 1 / probs.shape[1])]))
    picked = parts.double()[:, np.arange(len(y)), torch.from_numpy(y).long()]  # (3, rows)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -torch.log((torch.softmax(w, 0)[:, None] * picked).sum(0).clamp_min(1e-12)).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return t, torch.softmax(w.detach(), 0).numpy()


def apply_ensemble(probs: np.ndarray, params: tuple[float, np.ndarray]) -> np.ndarray:
    t, w = params
    return w[0] * apply_temperature(probs, t) + w[1] * probs + w[2] / probs.shape[1]


FIGURES = ("ece", "nll", "accuracy")


def named(values: np.ndarray) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in zip(FIGURES, values, strict=True)}


def scores(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean()
    return np.array([expected_calibration_error(probs, y), nll, (probs.argmax(1) == y).mean()])


METHODS = {
    "temperature": (fit_temperature, apply_temperature),
    "vector_l2_0.01": (lambda p, y: fit_vector(p, y, 1e-2), apply_vector),
    "vector_l2_0.001": (lambda p, y: fit_vector(p, y, 1e-3), apply_vector),
    "ensemble_temperature": (fit_ensemble, apply_ensemble),
}


def compare(probs: np.ndarray, y: np.ndarray, repeats: int = 5) -> dict:
    rng = np.random.default_rng(0)
    held_out = {name: [] for name in METHODS}
    for _ in range(repeats):
        order = rng.permutation(len(y))
        halves = order[: len(y) // 2], order[len(y) // 2:]
        for fit_rows, score_rows in (halves, halves[::-1]):
            for name, (fit, apply) in METHODS.items():
                params = fit(probs[fit_rows], y[fit_rows])
                held_out[name].append(scores(apply(probs[score_rows], params), y[score_rows]))
    out = {"rows": len(y), "uncalibrated": named(scores(probs, y))}
    for name, (fit, apply) in METHODS.items():
        out[name] = {"held_out": named(np.mean(held_out[name], axis=0)),
                     "fitted_rows_ece": round(float(scores(apply(probs, fit(probs, y)), y)[0]), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "fashion_lpft")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    state = load_checkpoint(args.run)
    model = tagger_from_checkpoint(state)
    table = drop_unreadable(read_labels(args.data / "labels.csv", None, [], state["config"]["ignore"]))
    frame = table.split("val")
    targets, _ = model.schema.encode(frame)
    _, raw = tagger_probabilities(model, frame[FILE].tolist())
    heads = {}
    for a in model.schema.attributes:
        if not a.multi:
            keep = targets[a.name] >= 0
            heads[a.name] = compare(raw[a.name][keep], targets[a.name][keep])
    result = {"benchmark": "calibration_methods", "run": str(args.run), "split": "val", "heads": heads}
    (ROOT / "benchmarks" / "results" / "calibration_methods.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
