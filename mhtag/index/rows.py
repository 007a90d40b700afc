"""One table row per image, and the plan of a run: shared by the local and the Ray engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhtag.data.images import FileFacts
from mhtag.data.labels import absolute, hash_split
from mhtag.data.schema import AttributeKind, encode_tags
from mhtag.index.columns import rid_for, text_column
from mhtag.index.meta import IndexMeta
from mhtag.results import Failure


@dataclass
class KnownLabels:
    """Known labels from a CSV, keyed by the image's path relative to the indexed folder."""

    by_rel: dict[str, dict[str, str]]  # stored form: tags as |a|b|
    splits: dict[str, str]
    kinds: dict[str, AttributeKind]  # the CSV's label columns
    unmatched: int = 0  # label rows that match no file under the folder
    texts: dict[str, dict[str, str]] = field(default_factory=dict)  # rel -> free-text column -> its text
    text_names: list[str] = field(default_factory=list)  # the CSV's free-text columns

    def given(self, rel: str, meta: IndexMeta, corrected: set[str] = frozenset()) -> dict[str, str]:
        """The columns the CSV sets for the image `rel`: its split and a label per attribute the CSV has, but for
        the `corrected` attributes (set by people since: a correction outlives every later `mhtag index`);
        nothing for an image the CSV does not name (its stored labels stay as they are)."""
        if rel not in self.by_rel:
            return {}
        labels, texts = self.by_rel[rel], self.texts.get(rel, {})
        split = {"split": self.splits[rel]} if rel in self.splits else {}
        return (split | {a.label: labels[a.name] for a in meta.attributes
                         if a.has_labels and a.name in labels and a.name not in corrected}
                | {text_column(t): texts[t] for t in self.text_names if t in texts})


@dataclass
class Plan:
    """What a run must do, from the files under `root` and the rows already indexed from there."""

    files: dict[str, Path]  # rel -> file
    todo: list[str] = field(default_factory=list)  # rel paths to embed (new or changed)
    changed: list[int] = field(default_factory=list)  # rids to delete before their re-embedded rows land
    vanished: list[int] = field(default_factory=list)  # rids whose file is gone
    refreshed: list[dict[str, Any]] = field(default_factory=list)  # same bytes, but a new mtime or known labels:
    # {rid, mtime_ns, label columns...}, written without embedding again
    unchanged: int = 0
    problems: list[Failure] = field(default_factory=list)  # what the folder walk could not use, with why
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # todo rel -> its split and label columns


def label_columns(rel: str, meta: IndexMeta, known: KnownLabels | None, old: dict[str, Any] | None,
                  corrected: set[str] = frozenset()) -> dict[str, str]:
    """The split and label columns of a row about to be written: the CSV's where it names the image, else what
    the image's previous row held (a re-embedded file keeps its labels), else a split from the path and no
    labels."""
    columns = {"split": hash_split(rel), "changed_ns": 0, **{a.label: "" for a in meta.attributes if a.has_labels},
               **{text_column(t): "" for t in meta.text_columns}}
    if old is not None:
        columns |= {k: old[k] for k in columns if old.get(k) is not None}
    return columns | (known.given(rel, meta, corrected) if known else {})


def row_of(rel: str, path: Path, facts: FileFacts, vec: np.ndarray, probs: dict[str, np.ndarray], r: int,
           meta: IndexMeta, thresholds: dict[str, list[float]], columns: dict[str, str]) -> dict[str, Any]:
    """One table row, from what the encoder saw of the file (its hash and upright size from the same read) and its
    split and label `columns`."""
    out: dict[str, Any] = {"rid": rid_for(str(absolute(path))), "id": facts.sha1, "path": str(absolute(path)),
                           "rel": rel, "size": facts.size, "mtime_ns": path.stat().st_mtime_ns,
                           "width": facts.width, "height": facts.height, "vector": vec, **columns}
    return out | head_columns(meta, probs, r, thresholds)


def head_columns(meta: IndexMeta, probs: dict[str, np.ndarray], r: int, thresholds: dict[str, list[float]]
                 ) -> dict[str, Any]:
    """Row `r`'s prediction columns: per head its answer (a tag group's tags over their thresholds, as `|a|b|`),
    the answer's confidence and the full probabilities."""
    out: dict[str, Any] = {}
    for a in meta.attributes:
        if a.has_head and not a.zero_shot:  # zero-shot answers come from the text tower (`index.zeroshot`)
            p = probs[a.name][r]
            if a.multi:
                over = p >= np.asarray(thresholds[a.name])
                out[a.pred] = encode_tags([c for c, o in zip(a.classes, over, strict=True) if o])
                out[a.conf] = float(p[over].min()) if over.any() else 0.0
            else:
                top = int(p.argmax())
                out[a.pred], out[a.conf] = a.classes[top], float(p[top])
            out[a.probs] = p.astype(np.float32)
    return out


@dataclass
class Written:
    new: int = 0
    changed: int = 0
    failed: list[Failure] = field(default_factory=list)
    rids: list[int] = field(default_factory=list)
