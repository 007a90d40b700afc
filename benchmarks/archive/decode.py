"""What feeds a GPU: images/s that one CPU core decodes and preprocesses (read, decode with JPEG draft mode,
letterbox, normalise) for the indexer, at the catalogue's own size and at 224. A GPU that embeds N images/s
needs about N / (this rate) cores of decoding beside it (docs/scale.md).

    python benchmarks/decode.py --images 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mhtag.data.datasets import SafeImageDataset
from mhtag.data.images import walk_images
from mhtag.data.transforms import build_transform
from mhtag.models.backbones import create_backbone

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"


def rate(files: list[str], size: list[int] | None) -> float:
    config = create_backbone("efficientnet_lite0", image_size=size).data_config
    dataset = SafeImageDataset(files, build_transform(config))
    dataset[0]
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = [str(f) for f in walk_images([DATA / "images"]).files[:args.images]]
    report = {"benchmark": "decode_per_core", "images": len(files), "source": "fashion12k JPEGs (60x80 and 96x128)",
              "images_per_second_per_core": {"catalogue_160x120": round(rate(files, [160, 120]), 1),
                                             "224x224": round(rate(files, None), 1)}}
    (ROOT / "benchmarks" / "results" / "decode.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
