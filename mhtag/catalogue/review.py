"""The review queue: known labels that the head and the labelled neighbours doubt, most doubted first, for a person
to accept the suggestion, keep the label, or skip. Each (row, single-label attribute) is scored by its fused answer:
the head's stored probabilities mixed with the vote of the row's nearest labelled neighbours (itself excluded), with
the index's tuned weight and temperature; a label is in the queue where the fused answer names another value,
ranked by how little probability the fused answer leaves it, and leaves it once a person has changed or kept it.
(Ranking by how far that falls below the class's mean probability, confident learning's per-class threshold,
found 4 flipped labels in 300 reviews of fashion12k where this found 7.)

Scoring the queue fuses every labelled row with its neighbours (seconds at 10k rows), so it is kept between answers:
it is scored again when the model changes or after RESCORE_AFTER label changes; between, an answered label just
leaves it (the neighbours' votes it moved are refreshed at the next scoring)."""

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
RESCORE_AFTER = 50  # label changes before the queue is scored again
_QUEUES: dict[str, tuple[str, int, list[_Scored]]] = {}  # index -> (model, label changes when scored, scores)


@dataclass
class _Scored:
    """One attribute's doubted labels: their rows (keys and relative paths), given and suggested class, score,
    the head's and the neighbours' shares, the nearest labelled rows."""

    attribute: str
    classes: list[str]
    rids: np.ndarray
    rels: list[str]
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    head: np.ndarray
    votes: np.ndarray
    neighbours: list[list[int]]  # keys of the nearest labelled rows


@guard_index
def review_queue(db: str | Path, limit: int = 20, offset: int = 0, attribute: str | None = None) -> ReviewQueue:
    """The doubted labels, most doubted first (`attribute`: one attribute's only); see the module docstring."""
    db = location(db)
    meta = require_meta(db)
    reviewed = LabelHistory(db, meta).corrected()
    for _ in range(2):
        items = [(float(s.score[i]), s, i) for s in _scored(db, meta) if attribute in (None, s.attribute)
                 for i in range(len(s.rids)) if s.attribute not in reviewed.get(int(s.rids[i]), ())]
        items.sort(key=lambda t: -t[0])
        page = items[offset:offset + limit]
        if _still_given(db, meta, page):
            break
        _QUEUES.pop(str(db), None)  # labels changed outside the history (an index run with a labels CSV)
    return ReviewQueue(total=len(items), items=[_item(s, i) for _, s, i in page])


def _still_given(db: Path, meta: IndexMeta, page: list) -> bool:
    """Whether each shown label is still the row's label."""
    snap = snapshot(db)
    for _, s, i in page:
        pos = snap.position(int(s.rids[i]))
        column = meta.attribute(s.attribute).label
        if pos is None or snap.rows.column(column)[pos].as_py() != s.classes[s.given[i]]:
            return False
    return True


def _item(s: _Scored, i: int) -> ReviewItem:
    def top(p: np.ndarray) -> list[tuple[str, float]]:
        return [(s.classes[j], round(float(p[j]), 4)) for j in np.argsort(-p)[:3] if p[j] > 0]

    return ReviewItem(id=int(s.rids[i]), rel=s.rels[i], attribute=s.attribute,
                      given=s.classes[s.given[i]], suggested=s.classes[s.suggested[i]],
                      score=round(float(s.score[i]), 4), head=top(s.head[i]), neighbours=top(s.votes[i]),
                      neighbour_ids=s.neighbours[i])


def _scored(db: Path, meta: IndexMeta) -> list[_Scored]:
    """Every attribute's doubted labels: kept while the model stays and fewer than RESCORE_AFTER labels changed."""
    kept = _QUEUES.get(str(db))
    if kept is not None and kept[0] == meta.model_id and 0 <= meta.label_changes - kept[1] < RESCORE_AFTER:
        return kept[2]
    scored = _score_all(db, meta)
    _QUEUES[str(db)] = (meta.model_id, meta.label_changes, scored)
    return scored


def _score_all(db: Path, meta: IndexMeta) -> list[_Scored]:
    snap = snapshot(db)
    lab = labelled_index(db)
    both = [a for a in meta.attributes if a.has_head and a.has_labels and not a.multi]
    if lab is None or not both:
        return []
    probs = read_columns(open_table(db), ["rid", *[a.probs for a in both]])
    row_of = {r: i for i, r in enumerate(probs.column("rid").to_pylist())}
    rows = [row_of[int(r)] for r in lab.vectors.rids[lab.positions]]
    heads = {a.name: np.asarray(probs.column(a.probs).to_pylist(), dtype=np.float32)[rows] for a in both}
    fusions = fuse_rows(db, meta, lab.positions, heads, both)
    rids, rel = lab.vectors.rids, snap.rows.column("rel")
    out = []
    for a in both:
        f = fusions[a.name]
        index = {c: j for j, c in enumerate(a.classes)}
        given = np.array([index.get(v, -1) for v in lab.labels[a.name][lab.positions]])
        suggested = f.fused.argmax(1)
        doubted = np.flatnonzero((given >= 0) & (suggested != given))
        at = lab.positions[doubted]
        score = 1 - f.fused[doubted, given[doubted]]
        out.append(_Scored(a.name, list(a.classes), rids[at], [rel[int(p)].as_py() for p in at], given[doubted],
                           suggested[doubted], score, f.head[doubted],
                           f.votes[doubted], [[int(rids[p]) for p in row if p >= 0]
                                              for row in f.voters[doubted][:, :SHOWN_NEIGHBOURS]]))
    return out


@guard_index
def answer(db: str | Path, rid: int, attribute: str, accept: bool) -> None:
    """A person's answer to a queued label: `accept` sets the suggestion, else the label is kept (recorded, so it
    leaves the queue and a later labels CSV leaves it too)."""
    db = location(db)
    for s in _scored(db, require_meta(db)):
        if s.attribute != attribute:
            continue
        where = np.flatnonzero(s.rids == rid)
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
