"""Recipe choices on fashion12k, measured on the validation split only (the test split is for the reported
figure, once): train a config with overrides, evaluate it on `val`, write per-head accuracy and macro-F1 to
benchmarks/results/fashion_val_<name>.json.

    python benchmarks/fashion_val.py --name probe_none --set class_weights=none
    python benchmarks/fashion_val.py --name probe_sqrt --set class_weights=sqrt
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fashion import DATA, HEADS, ROOT

from mhtag.core.config import load_config, parse_overrides
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="fashion_probe")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = parse_overrides(args.set)
    cfg = load_config(args.config, overrides)
    out = ROOT / "runs" / f"fashion_val_{args.name}"
    t0 = time.time()
    fit(cfg, args.data / "labels.csv", out=out, resume=(out / "last.pt").exists())
    train_s = time.time() - t0
    result = evaluate(out, args.data / "labels.csv", split="val")
    heads = accuracy_and_f1(result["heads"])
    report = {"benchmark": f"fashion12k_val_{args.name}", "split": "val", "config": args.config,
              "overrides": overrides, "train_seconds": round(train_s, 1), "val_rows": result["n"], "heads": heads}
    if cfg.mode == "finetune":  # `heads` is what shipped; with keep: best-of that may be the probe
        report |= finetune_summary(out)
    (ROOT / "benchmarks" / "results" / f"fashion_val_{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def finetune_summary(run_dir: Path) -> dict:
    """Which model a fine-tune kept, and its own best validation epoch (by mean macro-F1) as its loop measured it."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["epochs"]
    best = max(history, key=lambda h: h["score"])
    return {"kept": metrics.get("kept"), "probe_score": round(metrics.get("probe_score", float("nan")), 4),
            "finetune_best_epoch": {
                "epoch": best["epoch"] + 1, "epochs_run": len(history), "score": round(best["score"], 4),
                "epochs_seconds": round(sum(h["seconds"] for h in history), 1),
                "heads": accuracy_and_f1(best["heads"])}}


def accuracy_and_f1(heads: dict) -> dict:
    return {h: {k: round(heads[h][k], 4) for k in ("accuracy", "macro_f1")} for h in HEADS}


if __name__ == "__main__":
    main()
