"""The review queue: known labels that the head and the labelled neighbours doubt, most doubted first, for a person
to accept the suggestion, keep the label, or skip. Each (row, single-label attribute) is scored by its fused answer:
the head's stored probabilities mixed with the vote of the row's nearest labelled neighbours (itself excluded), with
the index's tuned weight and temperature; a label is in the queue where the fused answer names another value, and
leaves it once a person has changed or kept it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mhtag.catalogue.edits import confirm, set_labels
from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.storage import location
from mhtag.index.guard import guard_index
from mhtag.index.history import LabelHistory
from mhtag.index.meta import IndexMeta, require_meta
from mhtag.index.neighbours import fuse_rows, labelled_index
from mhtag.index.store import open_table, read_columns, snapshot
from mhtag.results import ReviewItem, ReviewQueue

SHOWN_NEIGHBOURS = 4


@dataclass
class _Scored:
    """One attribute's doubted labels: positions in the snapshot, given and suggested class, score, fused rows."""

    attribute: str
    classes: list[str]
    positions: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    head: np.ndarray
    votes: np.ndarray
    neighbours: np.ndarray  # positions of the nearest labelled rows


@guard_index
def review_queue(db: str | Path, limit: int = 20, offset: int = 0, attribute: str | None = None) -> ReviewQueue:
    """The doubted labels, most doubted first (`attribute`: one attribute's only); see the module docstring."""
    db = location(db)
    meta = require_meta(db)
    scored = _scored(db, meta)
    reviewed = LabelHistory(db, meta).corrected()
    snap = snapshot(db)
    rids = snap.vectors.rids
    items = [(float(s.score[i]), s, i) for s in scored if attribute in (None, s.attribute)
             for i in range(len(s.positions)) if s.attribute not in reviewed.get(int(rids[s.positions[i]]), ())]
    items.sort(key=lambda t: -t[0])
    rel = snap.rows.column("rel")
    shown = [_item(s, i, rids, rel) for _, s, i in items[offset:offset + limit]]
    return ReviewQueue(total=len(items), items=shown)


def _item(s: _Scored, i: int, rids: np.ndarray, rel) -> ReviewItem:
    def top(p: np.ndarray) -> list[tuple[str, float]]:
        return [(s.classes[j], round(float(p[j]), 4)) for j in np.argsort(-p)[:3] if p[j] > 0]

    pos = int(s.positions[i])
    return ReviewItem(id=int(rids[pos]), rel=rel[pos].as_py(), attribute=s.attribute,
                      given=s.classes[s.given[i]], suggested=s.classes[s.suggested[i]],
                      score=round(float(s.score[i]), 4), head=top(s.head[i]), neighbours=top(s.votes[i]),
                      neighbour_ids=[int(rids[p]) for p in s.neighbours[i] if p >= 0])


def _scored(db: Path, meta: IndexMeta) -> list[_Scored]:
    """Every attribute's doubted labels, computed once per table version (an edit makes a new one)."""
    snap = snapshot(db)
    if "review" not in snap.derived:
        snap.derived["review"] = _score_all(db, meta, snap)
    return snap.derived["review"]


def _score_all(db: Path, meta: IndexMeta, snap) -> list[_Scored]:
    lab = labelled_index(db)
    both = [a for a in meta.attributes if a.has_head and a.has_labels and not a.multi]
    if lab is None or not both:
        return []
    probs = read_columns(open_table(db), ["rid", *[a.probs for a in both]])
    row_of = {r: i for i, r in enumerate(probs.column("rid").to_pylist())}
    rows = [row_of[int(r)] for r in lab.vectors.rids[lab.positions]]
    heads = {a.name: np.asarray(probs.column(a.probs).to_pylist(), dtype=np.float32)[rows] for a in both}
    fusions = fuse_rows(db, meta, lab.positions, heads, both)
    out = []
    for a in both:
        f = fusions[a.name]
        index = {c: j for j, c in enumerate(a.classes)}
        given = np.array([index.get(v, -1) for v in lab.labels[a.name][lab.positions]])
        suggested = f.fused.argmax(1)
        doubted = np.flatnonzero((given >= 0) & (suggested != given))
        out.append(_Scored(a.name, list(a.classes), lab.positions[doubted], given[doubted], suggested[doubted],
                           1 - f.fused[doubted, given[doubted]], f.head[doubted], f.votes[doubted],
                           f.voters[doubted][:, :SHOWN_NEIGHBOURS]))
    return out


@guard_index
def answer(db: str | Path, rid: int, attribute: str, accept: bool) -> None:
    """A person's answer to a queued label: `accept` sets the suggestion, else the label is kept (recorded, so it
    leaves the queue and a later labels CSV leaves it too)."""
    db = location(db)
    for s in _scored(db, require_meta(db)):
        if s.attribute != attribute:
            continue
        rids = snapshot(db).vectors.rids[s.positions]
        where = np.flatnonzero(rids == rid)
        if len(where):
            i = int(where[0])
            if accept:
                set_labels(db, rid, {attribute: s.classes[s.suggested[i]]}, source="review")
            else:
                confirm(db, rid, attribute)
            return
    if attribute not in {a.name for a in require_meta(db).attributes}:
        raise MhtagError(f"unknown attribute {attribute!r}")
    raise NotFoundError(f"row {rid} has no doubted {attribute} label in the review queue")
