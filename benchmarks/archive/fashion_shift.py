"""fashion12k under real-world shifts: index train+val with their labels, then predict the test split clean and
under each controlled shift (`mhtag eval --shift`), scoring the head, the labelled neighbours and the fused
answer per attribute -> benchmarks/results/fashion_shift.json.

    python benchmarks/fashion_shift.py --model runs/fashion_probe
    python benchmarks/fashion_shift.py --model runs/fashion_val_lpft_lite2_seeded_aug --name fashion_shift_lpft_lite2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
from fashion import DATA, ROOT
from fashion_index import linked_folder

from mhtag.index.build import IndexOptions, index_images
from mhtag.index.robustness import evaluate_shifts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "fashion_probe")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--name", default="fashion_shift", help="writes benchmarks/results/<name>.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    labels = pd.read_csv(args.data / "labels.csv", dtype=str, keep_default_na=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        indexed = linked_folder(labels[labels["split"] != "test"], args.data, tmp / "trainval")
        index_images(indexed, tmp / "db", model=args.model, labels=indexed / "labels.csv",
                     options=IndexOptions(batch_size=64))
        t0 = time.time()
        result = evaluate_shifts(args.data / "labels.csv", tmp / "db", split="test")
    report = {"benchmark": "fashion12k_shift", "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(
        ROOT) else args.model), "seconds": round(time.time() - t0, 1), **result}
    (ROOT / "benchmarks" / "results" / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
