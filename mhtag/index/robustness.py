"""How well the answers hold up when photos stop looking like the catalogue: a labelled split predicted clean
and under each controlled shift (`data.shifts`), scored per attribute for the head, the labelled neighbours' vote
and the fused answer, exactly as `mhtag predict` gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mhtag.core.errors import MhtagError
from mhtag.core.progress import progress_bar
from mhtag.data.images import load_image
from mhtag.data.labels import FILE, absolute, drop_unreadable, read_labels
from mhtag.data.schema import is_blank
from mhtag.data.shifts import SHIFTS, apply_shift
from mhtag.index.predict import Predictor
from mhtag.index.store import DEFAULT_DB
from mhtag.results import AttributeAnswer

SOURCES = ("head", "neighbours", "fused")


def _answers(a: AttributeAnswer) -> dict[str, str | None]:
    return {"head": a.head[0][0] if a.head else None,
            "neighbours": a.neighbours[0][0] if a.neighbours else None,
            "fused": a.fused.label if isinstance(a.fused.label, str) else None}


def evaluate_shifts(labels: str | Path, db: str | Path = DEFAULT_DB, model: str | Path | None = None,
                    images: str | Path | None = None, split: str = "test", shifts: list[str] | None = None,
                    batch_size: int = 64, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Per shift ("clean" first), per single-label attribute, the accuracy of each source that answers it.

    Returns `{"split", "n", "attributes", "shifts": {shift: {source: {attribute: accuracy}}}, "left_out"}`;
    a row counts for an attribute when its label is one the model or the index knows (`left_out` counts the
    rest). Tag groups are not scored here. Each row's shift draws from its own seeded stream: reruns agree."""
    names = ["clean"] + list(SHIFTS if shifts is None else shifts)
    unknown = [s for s in names if s != "clean" and s not in SHIFTS]
    if unknown:
        raise MhtagError(f"unknown shift {unknown[0]!r}; choose from {', '.join(SHIFTS)}")
    predictor = Predictor(db, model)
    frame = drop_unreadable(read_labels(labels, images, [a.name for a in predictor.attributes if a.multi])).split(split)
    attrs = [a for a in predictor.attributes if not a.multi and a.name in frame.columns]
    if len(frame) == 0 or not attrs:
        raise MhtagError(f"{labels}: no rows of split {split!r} with a label for a single-label attribute of "
                         "this model or index")
    known = {a.name: set(a.classes) | set(a.label_values) for a in attrs}
    truth = {a.name: [None if is_blank(v) or str(v).strip() not in known[a.name] else str(v).strip()
                      for v in frame[a.name]] for a in attrs}
    files = frame[FILE].tolist()
    report = {"split": split, "n": len(files), "attributes": [a.name for a in attrs], "shifts": {},
              "left_out": {a.name: sum(t is None and not is_blank(v) for t, v in zip(truth[a.name], frame[a.name],
                                                                                  strict=True)) for a in attrs}}
    right = {name: {s: dict.fromkeys(truth, 0) for s in SOURCES} for name in names}
    scored = {name: {s: dict.fromkeys(truth, 0) for s in SOURCES} for name in names}
    with progress_bar("shifted predictions", len(names) * len(files), progress) as advance:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            originals = [load_image(f) for f in chunk]  # decoded once, shifted many times
            own = [str(absolute(f)) for f in chunk]  # an indexed row of this split never votes for itself
            for name in names:
                shifted = [apply_shift(name, img, seed * 1_000_003 + start + i) for i, img in enumerate(originals)]
                feats, probs = predictor.encoder.encode_images(shifted)
                for row, p in enumerate(predictor.answer(feats, probs, chunk, own), start):
                    for attr, want in ((a, truth[a][row]) for a in truth):
                        if want is None:
                            continue
                        for source, got in _answers(p.attributes[attr]).items():
                            if got is not None:
                                scored[name][source][attr] += 1
                                right[name][source][attr] += got == want
                advance(len(chunk))
    report["shifts"] = {name: {s: {a: round(right[name][s][a] / scored[name][s][a], 4) for a in truth
                                   if scored[name][s][a]} for s in SOURCES} for name in names}
    return report
