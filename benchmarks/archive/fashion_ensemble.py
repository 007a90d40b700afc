"""An ensemble of trained fashion12k runs (`mhtag ensemble`): built and recalibrated on the validation split,
then evaluated on the test split once. Writes the ensemble's and each member's validation accuracy, the test
figures of the ensemble and the members' training time to benchmarks/results/fashion_<name>.json.

    python benchmarks/fashion_ensemble.py --name ensemble runs/fashion_lpft_lite2 runs/fashion_lpft_e7 ...
    python benchmarks/fashion_ensemble.py --name ensemble6_flip --tta-flip runs/...   # members' test-time flip on
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fashion import DATA, HEAD_FIGURES, HEADS, ROOT, TARGETS
from fashion_val import accuracy_and_f1

from mhtag.training.ensemble import build_ensemble
from mhtag.training.evaluate import evaluate


def training_minutes(run: Path) -> float | None:
    """The member's whole training wall time, as its own benchmark recorded it (results/<run folder>.json)."""
    recorded = ROOT / "benchmarks" / "results" / f"{run.name}.json"
    if not recorded.is_file():
        return None
    return round(json.loads(recorded.read_text())["train_seconds"] / 60, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tta-flip", action="store_true", help="every member also embeds the mirror image")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    labels = args.data / "labels.csv"
    out = ROOT / "runs" / f"fashion_{args.name}"
    built = build_ensemble(args.runs, labels, out=out, tta_flip=args.tta_flip or None)
    t0 = time.time()
    result = evaluate(out, labels, split="test")
    heads = {h: {k: round(result["heads"][h][k], 4) for k in HEAD_FIGURES} for h in HEADS}
    report = {
        "benchmark": f"fashion12k_{args.name}",
        "tta_flip": args.tta_flip,
        "members": {str(r): {"training_minutes": training_minutes(r)} for r in args.runs},
        "val_rows": built["val_rows"],
        "val_accuracy_and_macro_f1": {Path(k).name: accuracy_and_f1(v) for k, v in built["val"].items()},
        "test_eval_seconds": round(time.time() - t0, 1),  # every member embeds the test images
        "test_rows": result["n"],
        "heads": heads,
        "targets_accuracy": TARGETS,
        "targets_met": {h: heads[h]["accuracy"] >= t for h, t in TARGETS.items()},
    }
    dest = ROOT / "benchmarks" / "results" / f"fashion_{args.name}.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
