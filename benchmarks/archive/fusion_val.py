"""How the neighbour vote should be fused, chosen on validation rows only: index train+val with their labels,
then predict every val row from its stored head probabilities and its training-row neighbours
(`validation_votes`), for each neighbour count k, vote temperature tau and tuning criterion of the head weight,
and for what the index does (`calibrate_fusion`: weight and temperature tuned together by log score). The tuning
uses one half of val and the scoring the other (10 halvings, each both ways), so the figures are held out.
Writes benchmarks/results/fusion_val_<name>.json.

    python benchmarks/fusion_val.py --model runs/fashion_val_lpft_lite2_smooth01 --name lpft_lite2_smooth01
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from fashion import ROOT, model_arguments
from fashion_index import linked_folder

from mhtag.index.build import IndexOptions, index_images
from mhtag.index.neighbours import validation_votes
from mhtag.inference.fusion import TAU_GRID, log_score, tune_fusion, tune_head_weight, vote_matrix
from mhtag.training.metrics import macro_f1_of

KS = (5, 10, 20, 50)
TAUS = (0.01, 0.02, 0.05, 0.1)
TUNED_K = 20  # the index's default neighbour count, with which `calibrate_fusion` tunes the temperature
HALVINGS = 10


def accuracy_of(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


CRITERIA = {"macro_f1": macro_f1_of, "accuracy": accuracy_of, "log_score": log_score}


def build_index(model: Path, data: Path, db_dir: Path) -> Path:
    db = db_dir / "db"
    if not db.exists():
        labels = pd.read_csv(data / "labels.csv", dtype=str, keep_default_na=False)
        folder = linked_folder(labels[labels["split"] != "test"], data, db_dir / "trainval")
        index_images(folder, db, model=model, labels=folder / "labels.csv", options=IndexOptions(batch_size=64))
    return db


def halves(n: int):
    """10 random halvings of n rows, each used both ways: (rows to tune on, rows to score)."""
    for seed in range(HALVINGS):
        order = np.random.default_rng(seed).permutation(n)
        a, b = order[: n // 2], order[n // 2:]
        yield a, b
        yield b, a


def held_out(head: np.ndarray, nbr: np.ndarray, y: np.ndarray, criterion: str) -> dict[str, float]:
    """Weight tuned by `criterion` on one half, fused accuracy and macro-F1 on the other, averaged."""
    scores = []
    for fit_rows, score_rows in halves(len(y)):
        w = tune_head_weight(head[fit_rows], nbr[fit_rows], y[fit_rows], CRITERIA[criterion])
        scores.append((w, w * head[score_rows] + (1 - w) * nbr[score_rows], y[score_rows]))
    return _mean_scores(scores)


def held_out_tuned(head: np.ndarray, votes: dict[float, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """What `calibrate_fusion` does (weight and temperature by log score, `tune_fusion`), held out."""
    scores, taus = [], []
    for fit_rows, score_rows in halves(len(y)):
        w, tau = tune_fusion(head[fit_rows], {t: v[fit_rows] for t, v in votes.items()}, y[fit_rows])
        scores.append((w, w * head[score_rows] + (1 - w) * votes[tau][score_rows], y[score_rows]))
        taus.append(tau)
    return {**_mean_scores(scores), "tau_median": float(np.median(taus))}


def _mean_scores(scores: list) -> dict[str, float]:
    return {"accuracy": round(float(np.mean([accuracy_of(f, y) for _, f, y in scores])), 4),
            "macro_f1": round(float(np.mean([macro_f1_of(f, y) for _, f, y in scores])), 4),
            "weight": round(float(np.mean([w for w, _, _ in scores])), 3)}


def main() -> None:
    args = model_arguments()
    db = build_index(args.model, args.data, ROOT / "runs" / f"index_{args.name}")
    heads = {}
    for name, r in validation_votes(db, max(KS)).items():
        if r.multi:  # a tag group: benchmarks/fusion_tags_val.py
            continue
        result = {"rows": len(r.y), "head": {"accuracy": round(accuracy_of(r.head, r.y), 4),
                                             "macro_f1": round(macro_f1_of(r.head, r.y), 4)}, "grid": {}}
        for k in KS:
            for tau in TAUS:
                nbr = vote_matrix(r.sims[:, :k], r.voters[:, :k], r.classes, tau)
                result["grid"][f"k={k} tau={tau}"] = {"neighbours": {"accuracy": round(accuracy_of(nbr, r.y), 4)},
                                                      **{c: held_out(r.head, nbr, r.y, c) for c in CRITERIA}}
        votes = {tau: vote_matrix(r.sims[:, :TUNED_K], r.voters[:, :TUNED_K], r.classes, tau) for tau in TAU_GRID}
        result["tuned"] = held_out_tuned(r.head, votes, r.y)
        heads[name] = result
    report = {"benchmark": f"fusion_val_{args.name}", "model": str(args.model), "split": "val",
              "halvings": HALVINGS, "heads": heads}
    out = ROOT / "benchmarks" / "results" / f"fusion_val_{args.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))


def summary(report: dict) -> str:
    """Per setting: mean over heads of the held-out fused accuracy and macro-F1."""
    lines = []
    heads = report["heads"]
    first = next(iter(heads.values()))
    lines.append(f"head only: acc {np.mean([h['head']['accuracy'] for h in heads.values()]):.4f} "
                 f"f1 {np.mean([h['head']['macro_f1'] for h in heads.values()]):.4f}")
    tuned = [h["tuned"] for h in heads.values()]
    lines.append(f"tuned per attribute (k={TUNED_K}): acc {np.mean([t['accuracy'] for t in tuned]):.4f} "
                 f"f1 {np.mean([t['macro_f1'] for t in tuned]):.4f}")
    for setting in first["grid"]:
        for c in CRITERIA:
            acc = np.mean([h["grid"][setting][c]["accuracy"] for h in heads.values()])
            f1 = np.mean([h["grid"][setting][c]["macro_f1"] for h in heads.values()])
            lines.append(f"{setting:16s} {c:9s} acc {acc:.4f} f1 {f1:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
