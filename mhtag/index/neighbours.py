"""Labelled neighbours in an index: the rows that vote, and the fusion weights tuned on their validation rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mhtag.core.storage import location
from mhtag.data.schema import decode_tags
from mhtag.index.columns import StoredAttribute
from mhtag.index.guard import guard_index
from mhtag.index.meta import IndexMeta, require_meta, write_meta
from mhtag.index.store import open_table, read_columns, snapshot
from mhtag.index.vectors import VectorIndex
from mhtag.inference.fusion import NEIGHBOUR_TAU, TAU_GRID, tune_fusion, vote_matrix

_logger = logging.getLogger(__name__)


@dataclass
class LabelledIndex:
    """The index's rows with what neighbour voting needs: vectors, paths, known labels and splits per row."""

    vectors: VectorIndex  # every row of the snapshot
    positions: np.ndarray  # the rows with at least one known label: the only ones that vote
    paths: np.ndarray
    labels: dict[str, np.ndarray]  # attribute -> label per row ("" = unknown)
    splits: np.ndarray
    _by_path: dict[str, int] | None = None

    def known_labels(self, path: str | None, multi: set[str]) -> dict[str, str | list[str]]:
        """The known labels of the indexed row at `path` (tags as lists); none for a path that is not indexed."""
        if self._by_path is None:
            self._by_path = {p: i for i, p in enumerate(self.paths)}
        i = self._by_path.get(path) if path is not None else None
        if i is None:
            return {}
        return {name: decode_tags(v[i]) if name in multi else v[i] for name, v in self.labels.items() if v[i]}


def labelled_index(db: str | Path) -> LabelledIndex | None:
    """The voters of the table's current version (built once per version)."""
    snap = snapshot(db)
    if "voters" not in snap.derived:
        snap.derived["voters"] = _build_labelled(db, snap)
    return snap.derived["voters"]


def _build_labelled(db: str | Path, snap) -> LabelledIndex | None:
    labelled = [a for a in require_meta(db).attributes if a.has_labels]
    if not labelled:
        return None

    def column(name: str) -> np.ndarray:
        return np.asarray(snap.rows.column(name).to_pylist(), dtype=object)

    labels = {a.name: column(a.label) for a in labelled}
    positions = np.flatnonzero(np.logical_or.reduce([v != "" for v in labels.values()]))
    if len(positions) == 0:
        return None
    return LabelledIndex(snap.vectors, positions, column("path"), labels, column("split"))


@dataclass
class Fusion:
    """One attribute's answers for some rows: the head's probabilities, the vote of each row's nearest labelled
    rows (itself excluded), their mix with the index's tuned weight, and the voters (positions, -1: none)."""

    attribute: StoredAttribute
    head: np.ndarray  # rows x classes (zeros without a head)
    votes: np.ndarray  # rows x classes
    fused: np.ndarray
    voters: np.ndarray  # rows x k

    def answers(self) -> tuple[list[str | list[str]], np.ndarray]:
        """(answer, confidence) per row: the top class, or a tag group's tags at or over their cuts."""
        a = self.attribute
        if not a.multi:
            top = self.fused.argmax(1)
            return [a.classes[j] for j in top], self.fused[np.arange(len(top)), top]
        cuts = np.asarray(a.thresholds or [0.5] * len(a.classes), dtype=np.float32)
        over = self.fused >= cuts
        tags = [[a.classes[j] for j in np.flatnonzero(row)] for row in over]
        confidence = np.where(over.any(1), np.where(over, self.fused, np.inf).min(1), 0.0)
        return tags, confidence


def fuse_rows(db: str | Path, meta: IndexMeta, positions: np.ndarray, heads: dict[str, np.ndarray],
              attributes: list[StoredAttribute], chunk: int = 4096) -> dict[str, Fusion]:
    """`Fusion` of `attributes` for the snapshot rows at `positions`, whose head probabilities are `heads`
    ({attribute: rows x classes}; an attribute without a head answers from its neighbours alone)."""
    lab = labelled_index(db)
    k = meta.fusion_k
    n = len(positions)
    sims = np.zeros((n, k), np.float32)
    pos = np.full((n, k), -1, np.int64)
    if lab is not None:
        for start in range(0, n, chunk):
            at = positions[start:start + chunk]
            s, p = lab.vectors.search(lab.vectors.at(at), k + 1, lab.positions)
            order = np.argsort(p == at[:, None], axis=1, kind="stable")[:, :k]  # the row itself last, then dropped
            got = min(k, s.shape[1])
            sims[start:start + len(at), :got] = np.take_along_axis(s, order, 1)[:, :got]
            pos[start:start + len(at), :got] = np.take_along_axis(p, order, 1)[:, :got]
    out = {}
    for a in attributes:
        labels = lab.labels.get(a.name) if lab is not None else None
        voters = np.where(pos >= 0, labels[np.maximum(pos, 0)], "") if labels is not None else \
            np.full(pos.shape, "", dtype=object)
        votes = vote_matrix(sims, voters, a.classes, meta.fusion_tau.get(a.name, NEIGHBOUR_TAU), a.multi)
        head = heads.get(a.name)
        if head is None:
            head, fused = np.zeros_like(votes), votes
        else:
            weight = meta.fusion.get(a.name, 0.5)
            fused = np.where(votes.sum(1, keepdims=True) > 0, weight * head + (1 - weight) * votes, head)
        out[a.name] = Fusion(a, head, votes, fused, np.where(voters != "", pos, -1))
    return out


@dataclass
class ValidationVotes:
    """One attribute's validation rows that carry a known label: their stored head probabilities, the
    similarities and labels of their k nearest training rows ("" where a neighbour has no label), the truth."""

    classes: list[str]  # a tag group's tags
    multi: bool
    head: np.ndarray  # rows x classes
    sims: np.ndarray  # rows x k
    voters: np.ndarray  # rows x k
    y: np.ndarray  # rows: class indices; a tag group: rows x tags, 0/1

    def votes(self, tau: float) -> np.ndarray:
        return vote_matrix(self.sims, self.voters, self.classes, tau, self.multi)


def validation_votes(db: str | Path, k: int) -> dict[str, ValidationVotes]:
    """Per attribute with both a head and known labels, what fusion is tuned on: validation rows predicted from
    their training-row neighbours. Empty without validation or training rows."""
    meta = require_meta(db)
    both = [a for a in meta.attributes if a.has_head and a.has_labels]
    lab = labelled_index(db)
    if not both or lab is None:
        return {}
    is_val = lab.splits[lab.positions] == "val"
    val, train = lab.positions[is_val], lab.positions[~is_val]
    if len(val) == 0 or len(train) == 0:
        _logger.info("no validation rows among the labelled images: fusion weights stay at 0.5")
        return {}
    arrow = read_columns(open_table(db), ["rid"] + [a.probs for a in both])
    row_of = {r: i for i, r in enumerate(arrow.column("rid").to_pylist())}
    val_rows = [row_of[r] for r in lab.vectors.rids[val]]
    sims, pos = lab.vectors.search(lab.vectors.at(val), k, rows=train)
    out = {}
    for a in both:
        y, known = _truth(a.classes, lab.labels[a.name][val], a.multi)
        head = np.asarray(arrow.column(a.probs).to_pylist(), dtype=np.float32)[val_rows]
        voters = np.where(pos >= 0, lab.labels[a.name][np.maximum(pos, 0)], "")
        out[a.name] = ValidationVotes(list(a.classes), a.multi, head[known], sims[known], voters[known], y[known])
    return out


def _truth(classes: list[str], labels: np.ndarray, multi: bool) -> tuple[np.ndarray, np.ndarray]:
    """(truth, which rows have one): class indices, or for a tag group a 0/1 matrix over its tags."""
    index = {c: j for j, c in enumerate(classes)}
    if not multi:
        y = np.array([index.get(t, -1) for t in labels])
        return y, y >= 0
    y = np.zeros((len(labels), len(classes)), np.float32)
    for r, value in enumerate(labels):
        y[r, [index[t] for t in decode_tags(value) if t in index]] = 1
    return y, labels != ""


@guard_index
def calibrate_fusion(db: str | Path, k: int = 20) -> tuple[dict[str, float], dict[str, float]]:
    """Per attribute with both a head and known labels: the head weight and the vote temperature that give the
    truth the highest mean log-probability on `validation_votes` (`tune_fusion`; a tag group's tags count each).
    Stored in the index meta; returns (weights, temperatures)."""
    db = location(db)
    rows = validation_votes(db, k)
    if not rows:
        return {}, {}
    meta = require_meta(db)
    for name, r in rows.items():
        meta.fusion[name], meta.fusion_tau[name] = tune_fusion(r.head, {t: r.votes(t) for t in TAU_GRID}, r.y)
    meta.fusion_k = k
    write_meta(db, meta)
    return {n: meta.fusion[n] for n in rows}, {n: meta.fusion_tau[n] for n in rows}
