"""fashion12k with the preset fashion_<mode>: train (probe or finetune), evaluate on the test
split, and write per-head accuracy and macro-F1 to benchmarks/results/fashion_<mode>.json.

    python benchmarks/fashion.py probe
    python benchmarks/fashion.py finetune --name lpft_lite2 --set max_minutes=45   # the fashion_finetune preset
    python benchmarks/fashion.py finetune --name lpft --set backbone=efficientnet_lite0 --set max_minutes=38
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from mhtag.core.config import load_config, parse_overrides
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"
HEADS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
REFERENCE = {"gender": .817, "masterCategory": .992, "subCategory": .953, "articleType": .831, "baseColour": .499,
             "season": .643, "usage": .871}  # frozen Lite0 160x120 + sklearn logistic regression, accuracy
HEAD_FIGURES = ("accuracy", "macro_f1", "macro_f1_true_classes", "balanced_accuracy", "ece", "ece_uncalibrated",
                "ece_floor", "ece_floor_p95")
TARGETS = {"articleType": .88, "subCategory": .96, "gender": .90, "baseColour": .70, "season": .70, "usage": .88}


def model_arguments(level: int = logging.WARNING) -> argparse.Namespace:
    """`--model RUN --name NAME [--data DIR]`, the arguments of a benchmark that studies one trained run."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--name", required=True, help="names the results file")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    logging.basicConfig(level=level)
    return args


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["probe", "finetune"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default=None, help="results/fashion_<name>.json and runs/fashion_<name> (default: mode)")
    args = ap.parse_args()
    name = args.name or args.mode
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(f"fashion_{args.mode}", parse_overrides(args.set))
    out = args.out or ROOT / "runs" / f"fashion_{name}"
    t0 = time.time()
    run = fit(cfg, args.data / "labels.csv", out=out, resume=(out / "last.pt").exists())
    train_s = time.time() - t0
    t1 = time.time()
    result = evaluate(out, args.data / "labels.csv", split="test")
    heads = {h: {k: round(result["heads"][h][k], 4) for k in HEAD_FIGURES} for h in HEADS}
    report = {
        "benchmark": f"fashion12k_{name}",
        "backbone": cfg.backbone,
        "config": cfg.to_dict(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()}, "
                  f"{torch.get_num_threads()} threads)",
        "epochs_run": len(run.history),
        "train_seconds": round(train_s, 1),
        "epochs_seconds": round(sum(h["seconds"] for h in run.history), 1),  # the loop alone: no setup, no report
        "eval_seconds": round(time.time() - t1, 1),
        "test_rows": result["n"],
        "heads": heads,
        "reference_accuracy_logreg_probe": REFERENCE,
        "targets_accuracy": TARGETS,
        "targets_met": {h: heads[h]["accuracy"] >= t for h, t in TARGETS.items()},
    }
    dest = ROOT / "benchmarks" / "results" / f"fashion_{name}.json"
    dest.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
