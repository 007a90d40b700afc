"""Would averaging the weights of fine-tuned runs (a model soup, Wortsman et al. 2022) give an ensemble's gain at
one model's cost? Validation split only (the test split is not read).

The runs must share backbone, heads and preprocessing (LP-FT runs of one recipe from the same ImageNet weights).
The uniform soup is the mean of every parameter and buffer (torch's `AveragedModel`, `use_buffers=True`: the
BatchNorm statistics are averaged too; the recipe freezes the backbone's, so they are the same ImageNet figures in
every run). The greedy soup adds runs in order of their val mean accuracy and keeps each one that does not lower
it. A temperature never changes an answer, so accuracy and macro-F1 are read off the uncalibrated heads.
Writes the members', the uniform soup's and each greedy step's val accuracy / macro-F1 per head to
benchmarks/results/soup_val.json (or `--name`.json).

    python benchmarks/soup_val.py runs/fashion_val_lpft_lite2_seeded_aug runs/fashion_val_lpft_lite2_smooth01 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from fashion import DATA, ROOT
from fashion_val import accuracy_and_f1
from torch.optim.swa_utils import AveragedModel

from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.models.tagger import Tagger
from mhtag.training.evaluate import split_rows, tagger_probabilities
from mhtag.training.metrics import head_metrics


def soup(members: list[Tagger]) -> Tagger:
    """The mean of the members' parameters and buffers, as a model of their architecture."""
    averaged = AveragedModel(members[0], use_buffers=True)
    for member in members:
        averaged.update_parameters(member)
    return averaged.module.eval()


def score(model: Tagger, files: list[str], targets: dict[str, np.ndarray], names: list[str]) -> dict:
    probs = tagger_probabilities(model, files)[1]
    heads = accuracy_and_f1(head_metrics(model.schema, probs, targets, {}))
    return {"runs": names, "heads": heads,
            "mean_accuracy": round(float(np.mean([h["accuracy"] for h in heads.values()])), 4),
            "mean_macro_f1": round(float(np.mean([h["macro_f1"] for h in heads.values()])), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--name", default="soup_val", help="results/<name>.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    t0 = time.time()
    states = [load_checkpoint(r) for r in args.runs]
    models = dict(zip(args.runs, (tagger_from_checkpoint(s) for s in states), strict=True))
    rows = split_rows(models[args.runs[0]], states[0]["config"], args.data / "labels.csv", None, "val")
    names = {r: Path(r).name for r in args.runs}
    with torch.no_grad():
        members = {r: score(m, rows.files, rows.targets, [names[r]]) for r, m in models.items()}
        uniform = score(soup(list(models.values())), rows.files, rows.targets, list(names.values()))
        order = sorted(args.runs, key=lambda r: -members[r]["mean_accuracy"])
        kept, best, greedy = [order[0]], members[order[0]]["mean_accuracy"], []
        for run in order[1:]:
            tried = score(soup([models[r] for r in kept + [run]]), rows.files, rows.targets,
                          [names[r] for r in kept + [run]])
            greedy.append(tried)
            if tried["mean_accuracy"] >= best:
                kept, best = kept + [run], tried["mean_accuracy"]
    report = {"benchmark": "fashion12k_soup_val", "split": "val", "val_rows": len(rows.files),
              "seconds": round(time.time() - t0, 1), "members": list(members.values()), "uniform_soup": uniform,
              "greedy_steps": greedy, "greedy_soup": [names[r] for r in kept], "greedy_mean_accuracy": best}
    dest = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"mean_accuracy / macro_f1": {
        "+".join(s["runs"]): (s["mean_accuracy"], s["mean_macro_f1"])
        for s in [*members.values(), uniform, *greedy]}, "greedy_soup": report["greedy_soup"]}, indent=2))


if __name__ == "__main__":
    main()
