"""Choose an ensemble of trained fashion12k runs on the validation split only: every subset of two or more
candidate runs is built with `build_ensemble` (members' val embeddings come from the feature cache after the
first build) and ranked by validation mean accuracy over the heads. The test split is not read. Writes every
subset's val figures, best first, to benchmarks/results/fashion_ensemble_select.json; then evaluate the winner on
test once with benchmarks/fashion_ensemble.py.

    python benchmarks/fashion_ensemble_select.py runs/fashion_lpft_lite2 runs/fashion_lpft_lite2_seed1 ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

from fashion import DATA, HEADS, ROOT, TARGETS
from fashion_val import accuracy_and_f1

from mhtag.training.ensemble import build_ensemble


def score(runs: tuple[Path, ...], labels: Path, out: Path) -> dict:
    """Val accuracy / macro-F1 per head of the ensemble of `runs` (built into `out`), and their means."""
    heads = accuracy_and_f1(build_ensemble(list(runs), labels, out=out)["val"]["ensemble"])
    return {"members": [r.name for r in runs], "heads": heads,
            "mean_accuracy": round(sum(h["accuracy"] for h in heads.values()) / len(heads), 4),
            "mean_macro_f1": round(sum(h["macro_f1"] for h in heads.values()) / len(heads), 4),
            "val_floors_met": sum(heads[h]["accuracy"] >= t for h, t in TARGETS.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    subsets = [s for n in range(2, len(args.runs) + 1) for s in itertools.combinations(args.runs, n)]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        scored = [score(s, args.data / "labels.csv", Path(scratch) / str(i)) for i, s in enumerate(subsets)]
    scored.sort(key=lambda s: (-s["mean_accuracy"], -s["mean_macro_f1"]))
    report = {"benchmark": "fashion12k_ensemble_select", "split": "val", "heads": list(HEADS),
              "candidates": [str(r) for r in args.runs], "subsets": len(subsets),
              "seconds": round(time.time() - t0, 1), "ranked": scored}
    dest = ROOT / "benchmarks" / "results" / "fashion_ensemble_select.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({**report, "ranked": scored[:5]}, indent=2))


if __name__ == "__main__":
    main()
