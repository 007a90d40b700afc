"""The in-memory engine: the table's snapshot (every column but vectors and probabilities, dictionary-coded on
first use) and its persisted vectors. Attribute filters are boolean masks over value codes: a user's value is
compared as a value, never pasted into a query string; the user's own SQL `where` runs in LanceDB. The filter runs
first, then the nearest-neighbour step over the rows that passed, so `n` rows come back whenever that many
match."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from mhtag.data.schema import tag_token
from mhtag.index.columns import StoredAttribute, text_column
from mhtag.index.engine import Resolved, query_vector, tally
from mhtag.index.filters import Source, source_term
from mhtag.index.meta import IndexMeta
from mhtag.index.sql import rows_passing
from mhtag.index.store import Snapshot, coded_mask, snapshot


def accepts(a: StoredAttribute, values: list[str]):
    """The test of one stored cell against a filter's values (a tag group's cell holds `tag_token`s)."""
    if a.multi:
        wanted = [tag_token(v) for v in values]
        return lambda cell: any(w in cell for w in wanted)
    allowed = set(values)
    return lambda cell: cell in allowed


def answer_codes(snap: Snapshot, a: StoredAttribute) -> tuple[np.ndarray, list[str]] | None:
    """Codes of the `any` answer per row: the known label where there is one, else the prediction."""
    key = f"any:{a.name}"
    if key not in snap.derived:
        label = snap.rows.column(a.label).to_numpy(zero_copy_only=False) if a.has_labels else None
        pred = snap.rows.column(a.pred).to_numpy(zero_copy_only=False) if a.has_head else None
        if label is None and pred is None:
            return None
        values = label if pred is None else pred if label is None else np.where(label != "", label, pred)
        vocab, codes = np.unique(values.astype(str), return_inverse=True)
        snap.derived[key] = (codes, vocab.tolist())
    return snap.derived[key]


def attribute_mask(snap: Snapshot, meta: IndexMeta, filters: dict[str, list[str]], source: Source = Source.ANY,
                   min_confidence: float | None = None) -> np.ndarray | None:
    """Rows passing the filters: AND over attributes, OR over one attribute's values (see `Source`)."""
    mask: np.ndarray | None = None
    for name, values in filters.items():
        a = meta.attribute(name)
        if source is Source.ANY and min_confidence is None and a.has_labels and a.has_head:
            # the same rows as the label-or-prediction term below, in one pass over the answers' codes
            term = coded_mask(*answer_codes(snap, a), accepts(a, values))
            mask = term if mask is None else mask & term
            continue

        def by_pred(a=a, values=values) -> np.ndarray:
            hit = snap.values_in(a.pred, accepts(a, values))
            return hit if min_confidence is None else hit & (snap.rows.column(a.conf).to_numpy() >= min_confidence)

        term = source_term(a, source, lambda a=a, values=values: snap.values_in(a.label, accepts(a, values)),
                           by_pred, lambda a=a: snap.values_in(a.label, lambda cell: cell == ""), np.logical_or,
                           np.logical_and)
        mask = term if mask is None else mask & term
    return mask


def disputed_mask(snap: Snapshot, meta: IndexMeta, names: list[str] | None = None) -> np.ndarray:
    """Rows whose known label and head prediction differ on some attribute (of `names`, else any)."""
    both = [a for a in meta.attributes if a.has_head and a.has_labels and (not names or a.name in names)]
    mask = np.zeros(snap.rows.num_rows, dtype=bool)
    labels = {a.name: snap.rows.column(a.label).to_numpy(zero_copy_only=False) for a in meta.attributes
              if a.has_labels}
    # a tag group's empty label is "no tags" on a row that has labels, unknown on a row that has none
    labelled_row = np.logical_or.reduce([v != "" for v in labels.values()]) if labels else mask
    for a in both:
        label = labels[a.name]
        pred = snap.rows.column(a.pred).to_numpy(zero_copy_only=False)
        mask |= (labelled_row if a.multi else label != "") & (label != pred)
    return mask


def facet_counts(snap: Snapshot, meta: IndexMeta, rows: np.ndarray | None) -> dict[str, dict[str, int]]:
    """Per attribute, matched rows (positions; None: all) per value (the known label where there is one, else
    the prediction)."""
    out: dict[str, dict[str, int]] = {}
    for a in meta.attributes:
        coded = answer_codes(snap, a)
        if coded is None:
            out[a.name] = {}
            continue
        codes, vocab = coded
        counts = np.bincount(codes if rows is None else codes[rows], minlength=len(vocab))
        out[a.name] = tally(a, vocab, counts.tolist())
    return out


class MemoryEngine:
    """The `Engine` over the snapshot of the table's current version (see the module docstring)."""

    def __init__(self, r: Resolved, version: tuple[int, int] | None = None):
        self.r = r
        self.snap = snapshot(r.db, version, r.meta.dim)
        q = r.query
        mask = attribute_mask(self.snap, r.meta, r.filters, q.source, q.min_confidence)
        if q.disputed:
            doubt = disputed_mask(self.snap, r.meta, list(r.filters))
            mask = doubt if mask is None else mask & doubt
        if q.where:
            passed = np.isin(self.snap.rows.column("rid").to_numpy(), rows_passing(r.db, q.where))
            mask = passed if mask is None else mask & passed
        self.mask = mask  # None: every row

    @cached_property
    def rows(self) -> np.ndarray | None:
        """The matched rows' positions (None: every row), listed once and only where needed: a vector search
        takes the mask, which at millions of rows is cheaper than the list."""
        return None if self.mask is None else np.flatnonzero(self.mask)

    def count(self) -> int:
        return self.snap.rows.num_rows if self.mask is None else int(np.count_nonzero(self.mask))

    def facets(self) -> dict[str, dict[str, int]]:
        return facet_counts(self.snap, self.r.meta, self.rows)

    def vector_of(self, rid: int) -> np.ndarray | None:
        pos = self.snap.position(rid)
        return None if pos is None else self.snap.vectors.at(pos)[0]

    def nearest(self, vector: np.ndarray, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        scores, pos = self.snap.vectors.search(query_vector(self.r.meta, self.r.db, vector), n, self.mask)
        keep = pos[0] >= 0
        return self._rows(pos[0][keep]), scores[0][keep]

    def rank(self, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        positions = np.arange(self.snap.rows.num_rows) if self.rows is None else self.rows
        names = self.r.sort_columns()
        order, score = self.r.query.order({c: self.snap.rows.column(c).to_numpy(zero_copy_only=False)[positions]
                                           for c in names})
        return self._rows(positions[order[:n]]), score[:n]

    def _rows(self, positions: np.ndarray) -> list[dict[str, Any]]:
        taken = hit_columns(self.snap, self.r.meta).take(pa.array(positions, type=pa.int64())).to_pydict()
        return [dict(zip(taken, values, strict=True)) for values in zip(*taken.values(), strict=True)]


def hit_columns(snap: Snapshot, meta: IndexMeta) -> pa.Table:
    """The snapshot's columns that a hit shows (a take of these is cheaper than of every column)."""
    names = ["rid", "path", "rel"] + [c for a in meta.attributes
                                      for c in ([a.pred, a.conf] if a.has_head else []) +
                                      ([a.label] if a.has_labels else [])] + [text_column(t) for t in meta.text_columns]
    key = "hit columns:" + ",".join(names)
    if key not in snap.derived:
        snap.derived[key] = snap.rows.select(names)
    return snap.derived[key]


def warm(db, meta: IndexMeta) -> None:
    """Builds now what the first searches would otherwise build: the snapshot, the value codes of every
    attribute column, the facets' answer codes and the row-id lookup (a server calls it before it listens)."""
    snap = snapshot(db)
    for a in meta.attributes:
        for column in ([a.label] if a.has_labels else []) + ([a.pred] if a.has_head else []):
            snap.codes(column)
    facet_counts(snap, meta, None)
    snap.position(0)
