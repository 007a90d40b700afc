"""Would more runs make the six-run ensemble better? Validation split only (the test split is not read).

Each run's calibrated val probabilities are computed at its own input size, and every candidate ensemble is
scored by the mean of its members' probabilities: the answer `mhtag ensemble` gives, since its recalibration
never changes an answer. So runs at another input size (224x168, 128x96), which one `mhtag ensemble` cannot
hold (its members share one preprocessing), are measured too: this says whether supporting them would pay.
Writes the base set's and each extended set's val accuracy / macro-F1 per head to
benchmarks/results/fashion_ensemble_extend_val.json (or `--name`.json).

    python benchmarks/fashion_ensemble_extend_val.py --base runs/fashion_lpft_lite2 ... \
        --extra runs/fashion_distill6 --extra runs/fashion_distill6,runs/fashion_distill6_seed1 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from fashion import DATA, HEADS, ROOT
from fashion_val import accuracy_and_f1

from mhtag.data.schema import LabelSchema
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.training.evaluate import split_rows, tagger_probabilities
from mhtag.training.metrics import head_metrics


def val_probabilities(run: Path, labels: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], LabelSchema]:
    """The run's calibrated val probabilities, the val targets and its schema."""
    state = load_checkpoint(run)
    model = tagger_from_checkpoint(state)
    rows = split_rows(model, state["config"], labels, None, "val")
    return tagger_probabilities(model, rows.files)[0], rows.targets, model.schema


def score(members: list[str], probs: dict[str, dict], targets: dict, schema: LabelSchema) -> dict:
    """Val accuracy / macro-F1 per head of the mean of `members`' probabilities, and their means."""
    mean = {h: sum(probs[m][h] for m in members) / len(members) for h in HEADS}
    heads = accuracy_and_f1(head_metrics(schema, mean, targets, {}))
    return {"members": [Path(m).name for m in members], "heads": heads,
            "mean_accuracy": round(float(np.mean([h["accuracy"] for h in heads.values()])), 4),
            "mean_macro_f1": round(float(np.mean([h["macro_f1"] for h in heads.values()])), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", nargs="+", required=True)
    ap.add_argument("--extra", action="append", required=True, help="comma-separated runs added to the base")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--name", default="fashion_ensemble_extend_val", help="results/<name>.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    labels = args.data / "labels.csv"
    extras = [group.split(",") for group in args.extra]
    t0 = time.time()
    probs, targets, schema = {}, None, None
    for run in dict.fromkeys(args.base + [r for g in extras for r in g]):
        probs[run], targets, schema = val_probabilities(Path(run), labels)
    sets = [score(args.base, probs, targets, schema)] + [score(args.base + g, probs, targets, schema) for g in extras]
    report = {"benchmark": "fashion12k_ensemble_extend_val", "split": "val", "val_rows": len(targets[HEADS[0]]),
              "seconds": round(time.time() - t0, 1), "base": sets[0], "extended": sets[1:]}
    dest = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("base", "extended")} | {
        "mean_accuracy / macro_f1": {"+".join(s["members"][len(args.base):]) or "base":
                                     (s["mean_accuracy"], s["mean_macro_f1"]) for s in sets}}, indent=2))


if __name__ == "__main__":
    main()
