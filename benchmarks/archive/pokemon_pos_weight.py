"""What `pos_weight` does to a tag group's precision: the pokemon probe (the pokemon preset, `mode=probe`) with
`pos_weights` (the tag group's BCE pos_weight, negatives over positives per tag) and `class_weights` (type1's
cross-entropy weights) both none / sqrt / inverse, capped, over seeds, on the validation split. Thresholds are
tuned per tag on val after calibration (what ships), so the precision/recall figures are the shipped model's,
measured on the rows that tuned them; mAP does not depend on them.
Writes benchmarks/results/pokemon_val_pos_weight.json.

    python benchmarks/pokemon_pos_weight.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from pokemon import DATA, ROOT

from mhtag.core.config import load_config
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

SCHEMES = ("none", "sqrt", "inverse")
TAGS = ("micro_precision", "micro_recall", "micro_f1", "macro_f1", "mAP")


def run(scheme: str, seed: int, labels: Path) -> dict[str, float]:
    cfg = load_config("pokemon",
                      {"mode": "probe", "class_weights": scheme, "pos_weights": scheme, "seed": seed,
                       "report": False})
    out = ROOT / "runs" / "pokemon_pos_weight" / f"{scheme}_s{seed}"
    fit(cfg, labels, out=out)
    heads = evaluate(out, labels, split="val")["heads"]
    return {**{f"types_{k}": round(heads["types"][k], 4) for k in TAGS},
            "type1_macro_f1": round(heads["type1"]["macro_f1"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    per_seed = {s: [run(s, seed, args.data / "labels.csv") for seed in args.seeds] for s in SCHEMES}
    summary = {s: {k: {"mean": round(statistics.mean(r[k] for r in rows), 4),
                       "std": round(statistics.pstdev(r[k] for r in rows), 4)} for k in rows[0]}
               for s, rows in per_seed.items()}
    report = {"benchmark": "pokemon_val_pos_weight", "split": "val", "seeds": args.seeds, "summary": summary,
              "per_seed": per_seed}
    (ROOT / "benchmarks" / "results" / "pokemon_val_pos_weight.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
