"""Labels against a hierarchy the other labels follow (`mhtag.audit.rules`), on fashion12k: the breaks in the
unmodified labels, then how many of a known share of flipped subCategory labels (another subCategory, seeded) the
rules find (recall) and how many of what they report was flipped (precision). Labels only: no image is read.
Prints JSON; writes benchmarks/results/audit_rules.json.

    .venv/bin/python benchmarks/audit_rules.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mhtag.audit.rules import rule_breaks
from mhtag.data.labels import ROW, read_labels

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion12k"
RATES = (0.005, 0.01, 0.02, 0.05, 0.1)
FLIPPED = "subCategory"


def flip(frame, rate: float, seed: int = 0) -> set[int]:
    """Set `rate` of the rows' FLIPPED label to another of its classes; returns their CSV rows."""
    rng = np.random.default_rng(seed)
    classes = sorted(frame[FLIPPED].unique())
    rows = rng.choice(len(frame), round(rate * len(frame)), replace=False)
    for i in rows:
        frame.iat[i, frame.columns.get_loc(FLIPPED)] = rng.choice([c for c in classes if c != frame[FLIPPED].iat[i]])
    return set(frame[ROW].iloc[rows].astype(int))


def main() -> None:
    table = read_labels(DATA / "labels.csv", None, [], ["productDisplayName"])
    t0 = time.monotonic()
    found = rule_breaks(table.frame, table.attributes)
    out = {"rows": len(table.frame), "seconds": round(time.monotonic() - t0, 2),
           "unmodified": [b.model_dump() for b in found], "flipped": {}}
    for rate in RATES:
        frame = table.frame.copy()
        flipped = flip(frame, rate)
        hits = {b.row for b in rule_breaks(frame, table.attributes) if b.attribute == FLIPPED}
        out["flipped"][str(rate)] = {"flipped": len(flipped), "reported": len(hits),
                                     "recall": round(len(hits & flipped) / len(flipped), 4),
                                     "precision": round(len(hits & flipped) / len(hits), 4) if hits else None}
    print(json.dumps(out, indent=2))
    (Path(__file__).parent / "results" / "audit_rules.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
