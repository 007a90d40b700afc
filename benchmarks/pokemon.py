"""The probe, a plain fine-tune and LP-FT on pokemon (1,016 real sprites, `type1` single-label and `types` tags),
over several seeds: mean and spread on val (where choices are made) and on test (the reported figure).

    python benchmarks/pokemon.py                          # the pokemon preset, seeds 0 1 2
    python benchmarks/pokemon.py --seeds 0 --split val    # while choosing settings: never look at test

The probe is LP-FT's own phase one (`<run>/probe`), so the three share data, seed and preprocessing. Runs are kept
in runs/pokemon/<method>-<config hash>-s<seed> and reused when finished; results go to
benchmarks/results/<name>_<split>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from mhtag.core.config import config_from_dict, load_config, parse_overrides
from mhtag.core.runtime import setup
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "pokemon"
METHODS = {"finetune": {"lp_ft": False}, "lpft": {"lp_ft": True}}  # each trains the probe first
FIGURES = {"type1": ("accuracy", "macro_f1"), "types": ("micro_f1", "macro_f1", "mAP")}


def train(cfg, out: Path) -> dict:
    """Train (or reuse a finished run) and return its timing and what `keep: best-of` would ship."""
    if not (out / "metrics.json").exists() or "kept" not in json.loads((out / "metrics.json").read_text()):
        t0 = time.time()
        fit(cfg, DATA / "labels.csv", out=out, resume=(out / "last.pt").exists() or (out / "probe").exists())
        (out / "seconds.txt").write_text(f"{time.time() - t0:.1f}")
    metrics = json.loads((out / "metrics.json").read_text())
    best = max(e["score"] for e in metrics["epochs"])
    return {"seconds": float((out / "seconds.txt").read_text()) if (out / "seconds.txt").exists() else None,
            "epochs_run": len(metrics["epochs"]), "val_score": best, "probe_val_score": metrics["probe_score"],
            "best_of_keeps": "probe" if metrics["probe_score"] > best else "finetune"}


def figures(run: Path, split: str) -> dict[str, float]:
    heads = evaluate(run, DATA / "labels.csv", split=split)["heads"]
    return {f"{head}_{name}": round(heads[head][name], 4) for head, names in FIGURES.items() for name in names}


def summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {"mean": round(statistics.mean(r[k] for r in per_seed), 4),
                "std": round(statistics.pstdev(r[k] for r in per_seed), 4),
                "min": min(r[k] for r in per_seed), "max": max(r[k] for r in per_seed)} for k in per_seed[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "pokemon")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default="pokemon")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    setup()
    base = load_config("pokemon", parse_overrides(args.set))
    tag = hashlib.sha1(json.dumps(base.to_dict(), sort_keys=True).encode()).hexdigest()[:8]  # one folder per config
    rows: dict[str, list[dict]] = {"probe": []} | {m: [] for m in args.methods}
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            keys = METHODS[method]
            cfg = config_from_dict({**keys, "seed": seed, "keep": "finetune", "report": False}, base)
            out = args.runs / f"{method}-{tag}-s{seed}"
            runs[method].append({"seed": seed, **train(cfg, out)})
            rows[method].append(figures(out, args.split))
            if method == args.methods[-1]:  # every fine-tune trains the same probe first: count it once
                rows["probe"].append(figures(out / "probe", args.split))
    if "lpft" in runs:  # what `keep: best-of` ships per seed: LP-FT, or the probe where it was better on val
        rows["lpft_best_of"] = [ft if run["best_of_keeps"] == "finetune" else probe
                                for ft, probe, run in zip(rows["lpft"], rows["probe"], runs["lpft"], strict=True)]
    report = {"benchmark": "pokemon", "split": args.split, "seeds": args.seeds, "config": base.to_dict(),
              "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
              "runs": runs, "summary": {m: summary(r) for m, r in rows.items()},
              "per_seed": rows}
    dest = ROOT / "benchmarks" / "results" / f"{args.name}_{args.split}.json"
    dest.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
