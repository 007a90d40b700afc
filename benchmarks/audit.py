"""How well `mhtag audit` finds wrong labels on real data: flip a known 5% of fashion12k's train labels of
articleType, baseColour and usage to another class of the same attribute (seeded), audit, and score the
rankings: the combined witnesses (what mhtag reports), cleanlab alone on the out-of-fold head probabilities
(self-confidence), and the neighbour vote alone. Per attribute: precision and recall of the flipped rows among
the top N suspects (N = number flipped) and the area under the precision-recall curve. Also writes the audit of
the unmodified labels (baseColour, season) as HTML, for a person to judge. Prints JSON; writes
benchmarks/results/audit.json. With `--vote-tau T` the neighbour vote keeps one temperature instead of one tuned
per attribute, the flipped labels alone are audited, and the results go to audit_tau<T>.json (an ablation).

    .venv/bin/python benchmarks/audit.py [--data ../shared/datasets/fashion12k] [--rate 0.05] [--vote-tau 0.05]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from mhtag.audit.labels import AuditOptions, audit_labels
from mhtag.core.runtime import setup
from mhtag.report.audit import write_audit_html

ATTRIBUTES = ["articleType", "baseColour", "usage"]
SIZE = [160, 120]


def flip(frame: pd.DataFrame, rate: float, seed: int) -> dict[str, set[str]]:
    rng = np.random.default_rng(seed)
    flipped = {}
    train = frame.index[frame["split"] == "train"]
    for a in ATTRIBUTES:
        labelled = train[frame.loc[train, a].notna()]
        chosen = rng.choice(labelled, int(round(rate * len(labelled))), replace=False)
        classes = sorted(frame[a].dropna().unique())
        for i in chosen:
            frame.at[i, a] = rng.choice([c for c in classes if c != frame.at[i, a]])
        flipped[a] = set(frame.loc[chosen, "path"])
    return flipped


def scores(suspects, a: str, flipped: set[str]) -> dict:
    mine = [s for s in suspects if s.attribute == a]
    truth = np.array([s.path in flipped for s in mine])
    n = int(truth.sum())
    rankings = {"combined": [s.score for s in mine], "cleanlab_alone": [1 - s.head_given for s in mine],
                "neighbours_alone": [1 - s.neighbours_given for s in mine]}
    out = {"flipped": n, "rows": len(mine)}
    tiebreak = np.random.default_rng(0).random(len(mine))  # ties (e.g. no neighbour votes for the given label)
    for name, score in rankings.items():
        score = np.asarray(score)
        top = np.lexsort((tiebreak, -score))[:n]
        out[name] = {"precision_at_n": round(float(truth[top].mean()), 4),
                     "recall_at_n": round(float(truth[top].sum() / n), 4),
                     "auprc": round(float(average_precision_score(truth, score)), 4)}
    flagged = np.array([s.flagged for s in mine])
    out["cleanlab_flags_on_combined"] = {"flagged": int(flagged.sum()),
                                         "precision": round(float(truth[flagged].mean()), 4) if flagged.any() else 0,
                                         "recall": round(float(truth[flagged].sum() / n), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets" /
                    "fashion12k")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vote-tau", type=float, default=None)
    args = ap.parse_args()
    setup()
    results = Path(__file__).parent / "results"
    frame = pd.read_csv(args.data / "labels.csv", dtype=str, keep_default_na=False, na_values=[""])
    flipped = flip(frame, args.rate, args.seed)
    work = Path(tempfile.mkdtemp(prefix="mhtag-audit-"))
    frame.to_csv(work / "flipped.csv", index=False)
    t0 = time.monotonic()
    result = audit_labels(work / "flipped.csv", args.data, ignore=["productDisplayName"],
                          options=AuditOptions(attributes=ATTRIBUTES, image_size=SIZE, vote_tau=args.vote_tau))
    seconds = time.monotonic() - t0
    out = {"rate": args.rate, "seed": args.seed, "image_size": SIZE, "seconds": round(seconds, 1),
           "vote_tau": result.summary["vote_tau"],
           "attributes": {a: scores(result.suspects, a, flipped[a]) for a in ATTRIBUTES}}
    if args.vote_tau is not None:
        print(json.dumps(out, indent=2))
        (results / f"audit_tau{args.vote_tau:g}.json").write_text(json.dumps(out, indent=2) + "\n")
        return
    clean = audit_labels(args.data / "labels.csv", ignore=["productDisplayName"],
                         options=AuditOptions(attributes=["baseColour", "season"], image_size=SIZE))
    write_audit_html(clean, args.data, results / "audit_fashion12k.html", per_attribute=30)
    out["unmodified"] = clean.summary
    print(json.dumps(out, indent=2))
    (results / "audit.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
