"""Attributes nobody labelled, answered zero-shot (`mhtag index --zero-shot 'pattern=striped,checked,solid'`):
each value's prompts go through the text tower kept with the index's model, every row's stored vector is scored
against them, and the answers are stored like a head's (`pred_`, `conf_`, `probs_` columns), so the attribute
filters, facets and sorts like any other. Where the index holds known labels of the attribute, its softmax
temperature is calibrated on them, as a head's is. Rows added by later runs are answered when they land."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from mhtag.core.errors import MhtagError
from mhtag.data.schema import AttributeKind
from mhtag.index.columns import StoredAttribute
from mhtag.index.meta import IndexMeta, require_meta, write_meta
from mhtag.index.rows import head_columns
from mhtag.index.store import add_missing_columns, open_table, snapshot, writer_lock
from mhtag.inference.words import ZeroShot, parse_zero_shot, require_tower

CHUNK = 8192  # rows scored at once


def zero_shot_of(a: StoredAttribute) -> ZeroShot:
    """A stored zero-shot attribute as the scorer it was made with."""
    return ZeroShot(a.name, list(a.classes), tuple(a.templates), a.temperature)


def check_zero_shot(specs: list[str], meta: IndexMeta | None, model_path: str | None) -> list[ZeroShot]:
    """The specs parsed, refused before any work if the model has no text tower or a name is a head's."""
    wanted = [parse_zero_shot(s) for s in specs]
    if wanted:
        require_tower(model_path, "--zero-shot")
    for zs in wanted:
        a = meta.find_attribute(zs.name) if meta else None
        if a is not None and a.has_head and not a.zero_shot:
            raise MhtagError(f"--zero-shot {zs.name}: the model has a trained head of that name; choose another name")
    return wanted


def answer_zero_shot(db: Path, wanted: list[ZeroShot]) -> list[str]:
    """Store the `wanted` attributes (all rows), and answer the rows that lack an answer of those the index already
    has; returns the attributes answered."""
    with writer_lock(db, wait=60.0):
        meta = require_meta(db)
        stored = {a.name: a for a in meta.attributes if a.zero_shot}
        todo = {zs.name: (zs, True) for zs in wanted} | \
            {n: (zero_shot_of(a), False) for n, a in stored.items() if n not in {zs.name for zs in wanted}}
        if not todo:
            return []
        tower = require_tower(meta.model_path, "a zero-shot attribute")
        snap = snapshot(db)
        vectors = snap.vectors
        attributes = list(meta.attributes)
        for name, (zs, new) in todo.items():
            a = meta.find_attribute(name)
            if new and a is not None and a.has_labels:
                labels = snap.rows.column(a.label).to_numpy(zero_copy_only=False)
                known = np.flatnonzero(np.isin(labels, zs.values))
                zs.calibrate(tower, vectors.at(known), labels[known])
            made = StoredAttribute(zs.name, AttributeKind.SINGLE, list(zs.values), has_head=True, zero_shot=True,
                                   templates=list(zs.templates), temperature=zs.temperature)
            if a is not None:
                made = replace(a, classes=made.classes, has_head=True, zero_shot=True, templates=made.templates,
                               temperature=made.temperature)
                attributes = [made if x.name == a.name else x for x in attributes]
            else:
                attributes.append(made)
        meta = replace(meta, attributes=attributes)
        table = open_table(db)
        add_missing_columns(table, meta)
        rows = _rows_to_answer(snap, meta, todo)
        _write(table, meta, snap, rows, [meta.attribute(n) for n in todo], tower)
        write_meta(db, meta)
    return list(todo)


def _rows_to_answer(snap, meta: IndexMeta, todo: dict) -> np.ndarray:
    """Every row for a newly defined attribute; else the rows without an answer yet (added since)."""
    if any(new for _, new in todo.values()):
        return np.arange(snap.rows.num_rows)
    names = set(snap.rows.column_names)
    missing = np.zeros(snap.rows.num_rows, dtype=bool)
    for name in todo:
        a = meta.attribute(name)
        missing |= snap.rows.column(a.pred).to_numpy(zero_copy_only=False) == "" if a.pred in names else True
    return np.flatnonzero(missing)


def _write(table, meta: IndexMeta, snap, rows: np.ndarray, attributes: list[StoredAttribute], tower) -> None:
    if not len(rows):
        return
    only = replace(meta, attributes=[replace(a, zero_shot=False) for a in attributes])  # head_columns writes them
    schema = pa.schema([table.schema.field("rid")] + [table.schema.field(c) for a in attributes
                                                      for c in (a.pred, a.conf, a.probs)])
    rids = snap.vectors.rids
    batches = []
    for start in range(0, len(rows), CHUNK):
        at = rows[start:start + CHUNK]
        x = snap.vectors.at(at)
        probs = {a.name: zero_shot_of(a).probabilities(tower, x) for a in attributes}
        batches.append(pa.Table.from_pylist([{"rid": int(rids[p]), **head_columns(only, probs, r, {})}
                                             for r, p in enumerate(at)], schema=schema))
    table.merge_insert("rid").when_matched_update_all().execute(pa.concat_tables(batches))
