"""Calibration on real data: per head, ECE before and after (temperature per single-label head, per-tag Platt
scaling per tag group where it helped on held-out validation rows), on val (where it was fitted) and on test.
Pokemon probes are trained here (3 seeds, the pokemon preset in probe mode); the fashion12k run is given.
Writes benchmarks/results/calibration.json.

    python benchmarks/calibration.py --fashion-run runs/backbones_efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from mhtag.core.config import load_config
from mhtag.models.checkpoint import load_checkpoint
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def calibration_of(run: Path, labels: Path) -> dict:
    state = load_checkpoint(run)
    out = {"temperatures": state["temperatures"], "platt_groups": sorted(state.get("platt", {}))}
    for split in ("val", "test"):
        heads = evaluate(run, labels, split=split)["heads"]
        out[split] = {h: {"ece_uncalibrated": round(m["ece_uncalibrated"], 4), "ece": round(m["ece"], 4)}
                      for h, m in heads.items()}
    return out


def _mean(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fashion-run", type=Path, default=ROOT / "runs" / "fashion_probe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = {"fashion12k": calibration_of(args.fashion_run, DATASETS / "fashion12k" / "labels.csv")}
    labels = DATASETS / "pokemon" / "labels.csv"
    seeds = {}
    for seed in args.seeds:
        out = ROOT / "runs" / f"calibration_pokemon_s{seed}"
        if not (out / "best.pt").exists():
            fit(load_config("pokemon", {"mode": "probe", "seed": seed}), labels, out=out)
        seeds[seed] = calibration_of(out, labels)
    summary = {split: {h: {k: _mean([s[split][h][k] for s in seeds.values()]) for k in ("ece_uncalibrated", "ece")}
                       for h in seeds[args.seeds[0]][split]} for split in ("val", "test")}
    report["pokemon_probe"] = {"seeds": seeds, "summary": summary}
    path = ROOT / "benchmarks" / "results" / "calibration.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
