"""Test-time horizontal flip, measured on fashion12k's validation split: evaluate trained fine-tunes as saved
(no flip) and with the flip switched on (the embedding is the mean of the image's and its mirror's). Writes
per-head accuracy, macro-F1 and calibrated ECE to benchmarks/results/fashion_val_<run>_flip<0|1>.json, the
format of `fashion_val.py`, for `ablation_table.py finetune`.

    python benchmarks/tta_flip_val.py runs/fashion_lpft runs/fashion_lpft_lite1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fashion import DATA, HEADS, ROOT

from mhtag.training.evaluate import evaluate

FIGURES = ("accuracy", "macro_f1", "ece")


def measure(run: Path, labels: Path, flip: bool) -> dict:
    t0 = time.time()
    result = evaluate(run, labels, split="val", tta_flip=flip)
    name = f"{run.name.removeprefix('fashion_')}_flip{int(flip)}"
    return {"benchmark": f"fashion12k_val_{name}", "split": "val", "run": str(run), "tta_flip": flip,
            "eval_seconds": round(time.time() - t0, 1), "val_rows": result["n"],
            "heads": {h: {k: round(result["heads"][h][k], 4) for k in FIGURES} for h in HEADS}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for run in args.runs:
        for flip in (False, True):
            report = measure(run, args.data / "labels.csv", flip)
            dest = ROOT / "benchmarks" / "results" / f"{report['benchmark'].replace('fashion12k', 'fashion')}.json"
            dest.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
