"""How low can a measured ECE go? For a trained fashion12k run, on the validation split only: per single-label
head, the ECE that a perfectly calibrated model with the head's own confidences would score (consistency
resampling: every answer comes true with exactly its confidence), at half of val and at the test split's size;
and the temperature-calibrated head's ECE on held-out val rows beside that band (temperature fitted on one half,
scored on the other, 10 halvings). Writes benchmarks/results/ece_floor_<name>.json.

    python benchmarks/ece_floor.py --model runs/fashion_val_lpft_lite2_seeded_aug --name lpft_lite2
"""

from __future__ import annotations

import json
import logging

import numpy as np
from fashion import HEADS, ROOT, model_arguments

from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.training.calibration import apply_temperature, fit_temperature
from mhtag.training.evaluate import split_rows, tagger_probabilities
from mhtag.training.metrics import calibrated_ece_draws, expected_calibration_error

HALVINGS = 10
TEST_ROWS = 1186  # the test split's size
TARGET = 0.03  # the ECE target


def held_out(raw: np.ndarray, y: np.ndarray) -> dict:
    """Temperature fitted on one half of the rows, ECE scored on the other, beside the band for that half."""
    eces, floors, p95s = [], [], []
    for seed in range(HALVINGS):
        order = np.random.default_rng(seed).permutation(len(y))
        fit_rows, score_rows = order[: len(y) // 2], order[len(y) // 2:]
        scored = apply_temperature(raw[score_rows], fit_temperature(raw[fit_rows], y[fit_rows]))
        eces.append(expected_calibration_error(scored, y[score_rows]))
        draws, _, _ = calibrated_ece_draws(scored.max(1), seed=seed)
        floors.append(draws.mean())
        p95s.append(np.quantile(draws, 0.95))
    return {"rows": len(y) - len(y) // 2, "ece": _r(np.mean(eces)), "ece_floor": _r(np.mean(floors)),
            "ece_floor_p95": _r(np.mean(p95s)),
            "halvings_within_band": int(sum(e <= p for e, p in zip(eces, p95s, strict=True)))}


def at_test_size(calibrated: np.ndarray) -> dict:
    """The band for TEST_ROWS rows drawn from these confidences, and how often a calibrated model meets TARGET."""
    draws = np.concatenate([calibrated_ece_draws(calibrated.max(1)[
        np.random.default_rng(seed).choice(len(calibrated), TEST_ROWS, replace=False)], seed=seed)[0]
        for seed in range(HALVINGS)])
    return {"rows": TEST_ROWS, "ece_floor": _r(draws.mean()), "ece_floor_p95": _r(np.quantile(draws, 0.95)),
            f"share_of_calibrated_models_at_or_below_{TARGET}": _r(np.mean(draws <= TARGET))}


def _r(x: float) -> float:
    return round(float(x), 4)


def main() -> None:
    args = model_arguments(logging.ERROR)
    state = load_checkpoint(args.model)
    model = tagger_from_checkpoint(state)
    rows = split_rows(model, state["config"], args.data / "labels.csv", None, "val")
    calibrated, raw = tagger_probabilities(model, rows.files)
    heads = {}
    for head in HEADS:
        y = rows.targets[head]
        known = y >= 0
        heads[head] = {"held_out_val": held_out(raw[head][known], y[known]),
                       "test_size": at_test_size(calibrated[head][known])}
    report = {"benchmark": f"ece_floor_{args.name}", "model": str(args.model), "split": "val",
              "val_rows": len(rows.files), "bins": 15, "heads": heads}
    out = ROOT / "benchmarks" / "results" / f"ece_floor_{args.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
