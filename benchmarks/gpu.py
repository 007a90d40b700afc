"""The GPU paths, measured where a CUDA device exists (bf16 autocast, channels_last, decode workers, pinned
memory): indexing images/s with the default Lite0 at the catalogue's own size and at 224, and the fashion12k
fine-tune's time and test accuracy against the floors. Without a GPU it says so and writes nothing.

    python benchmarks/gpu.py                    # indexing throughput + the fine-tune
    python benchmarks/gpu.py --skip-finetune
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from mhtag.core.config import load_config, parse_overrides
from mhtag.core.runtime import setup
from mhtag.index.build import index_images
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"
FLOORS = {"articleType": .88, "subCategory": .96, "gender": .90, "baseColour": .70, "season": .70, "usage": .88}


def indexing(model: Path | None, workers: int, batch: int) -> dict:
    """images/s of `index_images` over fashion12k's photos (all of them, once warm)."""
    with tempfile.TemporaryDirectory() as tmp:
        index_images(DATA / "images", Path(tmp) / "warm", model=model, workers=workers, batch_size=batch)
        report = index_images(DATA / "images", Path(tmp) / "db", model=model, workers=workers, batch_size=batch)
    return {"images": report.added, "seconds": round(report.seconds, 2),
            "images_per_second": round(report.images_per_second, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    setup()
    if not torch.cuda.is_available():
        print(json.dumps({"gpu": None, "skipped": "no CUDA device on this machine; nothing measured"}))
        return
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "indexing": {}}
    run = ROOT / "runs" / "gpu_fashion_finetune"
    if not args.skip_finetune:
        cfg = load_config(ROOT / "configs" / "fashion_finetune.yaml",
                          {"num_workers": args.workers, "report": False} | parse_overrides(args.set))
        t0 = time.time()
        trained = fit(cfg, DATA / "labels.csv", out=run, resume=(run / "last.pt").exists())
        seconds = time.time() - t0
        heads = evaluate(run, DATA / "labels.csv", split="test")["heads"]
        acc = {h: round(heads[h]["accuracy"], 4) for h in heads}
        report["finetune"] = {"seconds": round(seconds, 1), "epochs": len(trained.history), "kept": trained.kept,
                              "test_accuracy": acc, "floors_met": {h: acc[h] >= f for h, f in FLOORS.items()}}
    report["indexing"]["catalogue_size_with_heads"] = indexing(run if (run / "best.pt").exists() else None,
                                                               args.workers, args.batch)
    report["indexing"]["lite0_224_backbone_only"] = indexing(None, args.workers, args.batch)
    out = ROOT / "benchmarks" / "results" / "gpu.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
