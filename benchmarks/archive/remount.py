"""A catalogue copied or re-mounted (same bytes, new paths or modification times): what the embedding cache and
an index rerun cost then, against embedding from scratch. fashion12k images, the default Lite0 backbone, no
model. Writes benchmarks/results/remount.json.

    python benchmarks/remount.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from fashion import DATA, ROOT
from mhtag.inference.cache import cached_embeddings

from mhtag.index.build import index_images
from mhtag.models.backbones import create_backbone


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mhtag-remount-"))
    os.environ["MHTAG_CACHE"] = str(work / "cache")  # an empty cache: the first pass really embeds
    sources = sorted((DATA / "images").iterdir())[:args.n]
    first, second = work / "a", work / "b"
    first.mkdir()
    for f in sources:
        shutil.copy(f, first / f.name)
    backbone = create_backbone("efficientnet_lite0")
    files = [str(f) for f in sorted(first.iterdir())]
    _, embed_s = timed(cached_embeddings, backbone, files, backbone.data_config)
    shutil.copytree(first, second, copy_function=shutil.copy)  # new paths and modification times, same bytes
    moved = [str(second / Path(f).name) for f in files]
    _, moved_s = timed(cached_embeddings, backbone, moved, backbone.data_config)
    db = work / "index"
    built, index_s = timed(index_images, first, db, workers=2)
    for f in first.iterdir():
        os.utime(f)  # a re-mount: every mtime new
    refreshed, refresh_s = timed(index_images, first, db, workers=2)
    report = {"benchmark": "remount", "images": args.n,
              "embed_seconds": embed_s, "cached_after_copy_seconds": moved_s,
              "index_seconds": index_s, "index_rows": built.rows,
              "reindex_after_touch_seconds": refresh_s, "refreshed": refreshed.refreshed,
              "re_embedded": refreshed.updated + refreshed.added}
    shutil.rmtree(work)
    out = ROOT / "benchmarks" / "results" / "remount.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
