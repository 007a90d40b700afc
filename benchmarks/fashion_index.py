"""fashion12k: index train+val with their labels, predict the test split, and score head-only,
neighbours-only and fused answers per attribute (accuracy and macro-F1) -> benchmarks/results/fashion_index.json.

    python benchmarks/fashion_index.py --model runs/fashion_probe
    python benchmarks/fashion_index.py --model runs/fashion_lpft --name fashion_index_lpft
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from mhtag.index.build import IndexOptions, index_images
from mhtag.index.predict import predict

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"


def linked_folder(frame: pd.DataFrame, data: Path, dest: Path) -> Path:
    """A folder of symlinks to just these rows' images (the index walks a folder)."""
    (dest / "images").mkdir(parents=True)
    for rel in frame["path"]:
        (dest / rel).symlink_to(data / rel)
    frame.to_csv(dest / "labels.csv", index=False)
    return dest


def score(truth: list[str], answers: list[str]) -> dict[str, float]:
    """Macro-F1 as `mhtag eval` computes it: over the classes in the truth or the answers."""
    return {"accuracy": round(accuracy_score(truth, answers), 4),
            "macro_f1": round(f1_score(truth, answers, average="macro", zero_division=0), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "fashion_probe")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--name", default="fashion_index", help="writes benchmarks/results/<name>.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    labels = pd.read_csv(args.data / "labels.csv", dtype=str, keep_default_na=False)
    heads = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        indexed = linked_folder(labels[labels["split"] != "test"], args.data, tmp / "trainval")
        t0 = time.time()
        rep = index_images(indexed, tmp / "db", model=args.model, labels=indexed / "labels.csv",
                           options=IndexOptions(batch_size=64))
        index_s = time.time() - t0
        test = labels[labels["split"] == "test"].reset_index(drop=True)
        t1 = time.time()
        out = predict([args.data / p for p in test["path"]], tmp / "db", k=args.k)
        predict_s = time.time() - t1
    by_path = {Path(p.path).name: p.attributes for p in out.predictions}
    result = {"benchmark": "fashion12k_index_predict", "model": str(args.model), "k": args.k,
              "indexed_rows": rep.rows, "index_seconds": round(index_s, 1),
              "index_images_per_second": round(rep.images_per_second, 1), "test_rows": len(by_path),
              "predict_seconds": round(predict_s, 1), "fusion_weights": rep.fusion, "fusion_tau": rep.fusion_tau,
              "heads": {}}
    for h in heads:
        truth = [test.loc[i, h] for i in range(len(test)) if Path(test.loc[i, "path"]).name in by_path]
        rows = [by_path[Path(p).name][h] for p in test["path"] if Path(p).name in by_path]
        head = [r.head[0][0] for r in rows]
        nbr = [r.neighbours[0][0] if r.neighbours else "unknown" for r in rows]
        fused = [r.fused.label for r in rows]
        result["heads"][h] = {"head": score(truth, head), "neighbours": score(truth, nbr), "fused": score(truth, fused),
                              "agree_rate": round(float(np.mean([bool(r.agree) for r in rows])), 4)}
    mean = {kind: round(float(np.mean([result["heads"][h][kind]["macro_f1"] for h in heads])), 4)
            for kind in ("head", "neighbours", "fused")}
    result["mean_macro_f1"] = mean
    result["fused_at_least_best_single"] = mean["fused"] >= max(mean["head"], mean["neighbours"])
    (ROOT / "benchmarks" / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
