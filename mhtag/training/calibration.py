"""Calibration: one temperature per single-label head, fitted on validation rows after training, so that a
head's confidence means what it says (a 0.8 is right about 80% of the time)."""

from __future__ import annotations

import numpy as np
import torch

from mhtag.data.schema import LabelSchema


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
    """A temperature per single-label head (tag groups keep their tuned thresholds and are left as they are)."""
    return {a.name: round(fit_temperature(probs[a.name], targets[a.name]), 4)
            for a in schema.attributes if not a.multi}
