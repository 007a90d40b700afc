"""How a tag group's neighbour vote should be fused, chosen on validation rows only (pokemon `types`): for each
trained run, index train+val with their labels, then predict every val row from its stored head probabilities and
its training-row neighbours (`validation_votes`), and compare, on one half of val after tuning on the other (10
halvings, each both ways):
  head: the head alone, at its own per-tag thresholds (tuned in training on all of val: in-sample here);
  head_refit: the head alone, per-tag thresholds tuned by F1 on the tuning half (held out, like the fused ones);
  neighbours: the vote alone (k=20, temperature 0.05), thresholds 0.5;
  fixed: what the index did for tag groups before: head weight 0.5, temperature 0.05, the head's thresholds;
  tuned: head weight and temperature tuned together by log score (`tune_fusion`), the head's thresholds;
  tuned_thresholds: as tuned, and per-tag thresholds re-tuned by F1 on the fused probabilities.
With --test, after the choice (made on val: the tuned weight and temperature), the test split is looked at once:
every test image predicted with the index, as the head alone (weight 1), as fused before (0.5, 0.05) and as fused
now (the index's tuned pair), scored by micro- and macro-F1 over the tags. Writes
benchmarks/results/fusion_tags_val_<name>.json.

    python benchmarks/fusion_tags_val.py --name pokemon_probe runs/pk_probe_s0 runs/pk_probe_s1 runs/pk_probe_s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from fusion_val import build_index, halves
from sklearn.metrics import f1_score
from sklearn.preprocessing import MultiLabelBinarizer

from mhtag.data.schema import decode_tags
from mhtag.index.neighbours import validation_votes
from mhtag.index.predict import Predictor
from mhtag.inference.fusion import NEIGHBOUR_TAU, TAU_GRID, tune_fusion
from mhtag.models.checkpoint import load_checkpoint
from mhtag.training.metrics import multi_label_metrics, tune_thresholds

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "pokemon"
K = 20
FIGURES = ("micro_f1", "macro_f1", "mAP")


def variants(r, votes: dict[float, np.ndarray], head_thresholds: np.ndarray, fit_rows: np.ndarray
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per variant: (probabilities of every row, thresholds), tuned on `fit_rows` where anything is tuned."""
    w, tau = tune_fusion(r.head[fit_rows], {t: v[fit_rows] for t, v in votes.items()}, r.y[fit_rows])
    tuned = w * r.head + (1 - w) * votes[tau]
    return {"head": (r.head, head_thresholds),
            "head_refit": (r.head, tune_thresholds(r.head[fit_rows], r.y[fit_rows])),
            "neighbours": (votes[NEIGHBOUR_TAU], np.full(len(r.classes), 0.5)),
            "fixed": (0.5 * r.head + 0.5 * votes[NEIGHBOUR_TAU], head_thresholds),
            "tuned": (tuned, head_thresholds),
            "tuned_thresholds": (tuned, tune_thresholds(tuned[fit_rows], r.y[fit_rows]))}


def held_out(r, head_thresholds: np.ndarray) -> dict[str, dict[str, float]]:
    votes = {tau: r.votes(tau) for tau in sorted({*TAU_GRID, NEIGHBOUR_TAU})}
    scores: dict[str, list[dict]] = {}
    for fit_rows, score_rows in halves(len(r.y)):
        for name, (probs, thresholds) in variants(r, votes, head_thresholds, fit_rows).items():
            scores.setdefault(name, []).append(multi_label_metrics(probs[score_rows], r.y[score_rows], thresholds))
    return {name: {f: round(float(np.mean([m[f] for m in runs])), 4) for f in FIGURES}
            for name, runs in scores.items()}


def test_look(db: Path, attribute: str) -> dict[str, dict[str, float]]:
    """Test rows predicted with the index as the head alone, fused as before, and fused as tuned now."""
    labels = pd.read_csv(DATA / "labels.csv", dtype=str, keep_default_na=False)
    test = labels[labels["split"] == "test"]
    predictor = Predictor(db)
    tuned = (predictor.meta.fusion[attribute], predictor.meta.fusion_tau[attribute])
    binarizer = MultiLabelBinarizer().fit([decode_tags(v) for v in labels[attribute]])
    truth = binarizer.transform([decode_tags(v) for v in test[attribute]])
    out = {}
    for name, (weight, tau) in {"head": (1.0, NEIGHBOUR_TAU), "fixed": (0.5, NEIGHBOUR_TAU), "tuned": tuned}.items():
        predictor.meta.fusion[attribute], predictor.meta.fusion_tau[attribute] = weight, tau
        answers = predictor.predict_files([DATA / p for p in test["path"]]).predictions
        pred = binarizer.transform([a.attributes[attribute].fused.label for a in answers])
        out[name] = {"micro_f1": round(float(f1_score(truth, pred, average="micro", zero_division=0)), 4),
                     "macro_f1": round(float(f1_score(truth, pred, average="macro", zero_division=0)), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--name", required=True)
    ap.add_argument("--attribute", default="types")
    ap.add_argument("--test", action="store_true", help="look at test once, after the choice")
    args = ap.parse_args()
    per_run = {}
    for run in args.runs:
        db = build_index(run, DATA, ROOT / "runs" / f"index_tags_{run.name}")
        r = validation_votes(db, K)[args.attribute]
        head_thresholds = np.asarray(load_checkpoint(run)["thresholds"][args.attribute])
        per_run[str(run)] = {"rows": len(r.y), **held_out(r, head_thresholds)}
        if args.test:
            per_run[str(run)]["test"] = test_look(db, args.attribute)
    names = [n for n in next(iter(per_run.values())) if n not in ("rows", "test")]
    mean = {n: {f: round(float(np.mean([p[n][f] for p in per_run.values()])), 4) for f in FIGURES} for n in names}
    report = {"benchmark": f"fusion_tags_val_{args.name}", "attribute": args.attribute, "split": "val", "k": K,
              "halvings": "10, each both ways", "mean_over_runs": mean, "runs": per_run}
    if args.test:
        looks = [p["test"] for p in per_run.values()]
        report["test_mean_over_runs"] = {n: {f: round(float(np.mean([t[n][f] for t in looks])), 4)
                                             for f in looks[0][n]} for n in looks[0]}
    (ROOT / "benchmarks" / "results" / f"fusion_tags_val_{args.name}.json").write_text(json.dumps(report, indent=2)
                                                                                      + "\n")
    print(json.dumps({k: v for k, v in report.items() if "mean" in k}, indent=2))


if __name__ == "__main__":
    main()
