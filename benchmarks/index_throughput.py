"""Indexing throughput against the bare backbone, same batch size and image size, same run:
ratio = (images/s of `index_images`, end to end: decode, forward, heads, rows, commits)
        / (images/s of the backbone's forward alone on ready-made tensors)
-> benchmarks/results/index_throughput.json.

    python benchmarks/index_throughput.py --model runs/fashion_probe --images 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from mhtag.core.runtime import auto_workers
from mhtag.index.build import IndexOptions, index_images
from mhtag.inference.encoder import load_encoder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"


@torch.no_grad()
def forward_throughput(module: torch.nn.Module, size: list[int], batch: int, n: int) -> float:
    x = torch.randn(batch, 3, *size)
    module.eval()
    module(x)  # warm up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        module(x)
        done += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="trained run (default: the offline backbone alone)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: auto)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files = sorted((DATA / "images").glob("*.jpg"))[: args.images]
    enc = load_encoder(args.model)
    size = enc.data_config["input_size"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
        bare = forward_throughput(enc.module, size, args.batch_size, len(files))
        t0 = time.perf_counter()
        rep = index_images(folder, Path(tmp) / "db", model=args.model,
                           options=IndexOptions(batch_size=args.batch_size, workers=args.workers))
        total = time.perf_counter() - t0
    indexed = rep.added / total
    result = {"benchmark": "index_throughput", "model": str(args.model) if args.model else enc.backbone,
              "images": len(files), "image_size": size, "batch_size": args.batch_size,
              "workers": auto_workers(args.workers),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "bare_forward_images_per_s": round(bare, 1), "index_images_per_s": round(indexed, 1),
              "ratio": round(indexed / bare, 3), "target_ratio": 0.85}
    (ROOT / "benchmarks" / "results" / "index_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
