"""What decoding processes cost a fine-tune when they start per epoch versus once per run: a short LP-FT fine-tune
of the Lite0 backbone on demo images, with `num_workers` 0 and 2, seconds per `fit` (the run repeated; the embedding
cache is warm after the first). Prints JSON; writes benchmarks/results/loader_workers.json.

    .venv/bin/python benchmarks/loader_workers.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mhtag.core.config import load_config
from mhtag.core.runtime import setup
from mhtag.data.synthetic import make_demo_data
from mhtag.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]


def seconds_per_fit(labels: Path, out: Path, workers: int, epochs: int, repeats: int) -> list[float]:
    cfg = load_config(overrides={"backbone": "efficientnet_lite0", "image_size": [64, 64], "mode": "finetune",
                                 "multilabel": ["marks"], "epochs": epochs, "probe_epochs": 5, "batch_size": 32,
                                 "report": False, "num_workers": workers})
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fit(cfg, labels, out=out / f"w{workers}_{i}")
        times.append(round(time.perf_counter() - t0, 2))
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    threads = setup()
    with tempfile.TemporaryDirectory() as tmp:
        labels = make_demo_data(Path(tmp) / "demo", n=args.images, px=64)
        report = {"benchmark": "loader_workers", "threads": threads, "images": args.images, "epochs": args.epochs,
                  "seconds_per_fit": {str(w): seconds_per_fit(labels, Path(tmp), w, args.epochs, args.repeats)
                                      for w in (0, 2)}}
    (ROOT / "benchmarks" / "results" / "loader_workers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
