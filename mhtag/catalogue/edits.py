"""Known labels changed where people see them: one row's labels (the gallery, the API), a file of corrections
(`mhtag labels import`), the review queue's answers, and undoing a change. Every change is checked against the
attribute's kind and vocabulary, recorded in the label history first, then written to the table in one commit;
one writer at a time (a second edit waits for the first)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.io import atomic_write_text
from mhtag.core.storage import location
from mhtag.data.labels import Skipped, read_csv_frame
from mhtag.data.schema import decode_tags, is_blank, join_tags, split_tags
from mhtag.index.columns import text_column
from mhtag.index.guard import guard_index
from mhtag.index.history import SOURCES, Change, LabelHistory
from mhtag.index.labels import InvalidLabel, checked_labels
from mhtag.index.meta import IndexMeta, require_meta, write_meta
from mhtag.index.store import add_missing_columns, open_table, read_columns, writer_lock
from mhtag.results import ExportReport, ImportReport

EDIT_WAIT_S = 10.0  # how long an edit waits for another writer (an edit, an index run) before it is refused


@guard_index
def set_labels(db: str | Path, rid: int, labels: Mapping[str, Any], source: str = "api",
               add_values: bool = False) -> list[Change]:
    """Set or clear labels of the row `rid`: `{attribute: value}`, a value being a string (single-label), a list of
    tags (a tag group) or None (clear). A value the attribute never had (or an attribute the index does not have)
    is refused with the valid choices unless `add_values`. Returns the changes made (none where a label already
    had that value)."""
    return _edit(location(db), {int(rid): labels}, source, add_values)[0]


@guard_index
def confirm(db: str | Path, rid: int, attribute: str, source: str = "review") -> Change:
    """Record that a person kept row `rid`'s `attribute` label as it is (a review's "keep", a gallery's confirm):
    it leaves the review queue, and a later labels CSV leaves it too. The label itself does not change."""
    db = location(db)
    meta = require_meta(db)
    a = meta.find_attribute(attribute)
    if a is None or not a.has_labels:
        raise MhtagError(f"index {db} holds no {attribute!r} labels")
    current = _current(open_table(db), meta, [int(rid)]).get(int(rid))
    if current is None:
        raise NotFoundError(f"no row with id {rid} in index {db}")
    value = current[a.label]
    kept = decode_tags(value) if a.multi else value
    return _edit(db, {int(rid): {a.name: kept or None}}, source, add_values=True, note="kept", unchanged=True)[0][0]


@guard_index
def undo(db: str | Path, change_id: int) -> Change:
    """Take change `change_id` back: its attribute gets its old value again, as a new change (source "undo").
    Refused if the label has changed since (undo the later change first)."""
    db = location(db)
    meta = require_meta(db)
    history = LabelHistory(db, meta)
    found = [c for c in history.all() if c.id == change_id]
    if not found:
        raise NotFoundError(f"no label change {change_id} in index {db}")
    target = found[0]
    later = [c for c in history.after(change_id) if c.rid == target.rid and c.attribute == target.attribute]
    if later:
        raise MhtagError(f"{target.attribute} of row {target.rid} changed again after change {change_id} (change "
                         f"{later[-1].id}); undo that one first")
    multi = meta.attribute(target.attribute).multi
    old = decode_tags(target.old) if multi else target.old
    changes = _edit(db, {target.rid: {target.attribute: old or None}}, "undo", add_values=True,
                    note=f"undo of change {change_id}")[0]
    if not changes:
        raise MhtagError(f"{target.attribute} of row {target.rid} already holds what change {change_id} replaced")
    return changes[0]


@guard_index
def label_history(db: str | Path, rid: int | None = None) -> list[Change]:
    """The recorded label changes of the index (of one row), oldest first."""
    db = location(db)
    history = LabelHistory(db, require_meta(db))
    return history.all() if rid is None else history.of_row(int(rid))


@guard_index
def import_labels(db: str | Path, csv: str | Path, add_values: bool = False,
                  multilabel: list[str] | tuple = ()) -> ImportReport:
    """Apply a file of corrections: a CSV with a `path` column (the row's path under its folder, or its full path)
    and one column per attribute; a filled cell sets that label (tags `a|b`), a blank one leaves it. A row that
    names no indexed image or holds an invalid value is not applied, and is reported with its line and why.
    `multilabel`: columns of tags, for attributes the index does not have yet (`add_values`)."""
    db = location(db)
    frame = read_csv_frame(csv)
    meta = require_meta(db)
    rows = read_columns(open_table(db), ["rid", "rel", "path"]).to_pylist()
    by_path = {r["rel"]: r["rid"] for r in rows} | {r["path"]: r["rid"] for r in rows}
    edits: dict[int, dict[str, Any]] = {}
    skipped: list[Skipped] = []
    attributes = [c for c in frame.columns if c not in ("path", "split")]
    for line, record in enumerate(frame.to_dict("records"), start=2):
        path = "" if is_blank(record["path"]) else str(record["path"]).strip()
        rid = by_path.get(path)
        if rid is None:
            skipped.append(Skipped(line, path, "no indexed image has this path"))
            continue
        given = {a: _cell(meta, a, record[a], multilabel) for a in attributes if not is_blank(record[a])}
        try:
            meta = checked_labels(meta, given, add_values).applied_to(meta)
        except InvalidLabel as exc:
            skipped.append(Skipped(line, path, str(exc)))
            continue
        edits.setdefault(rid, {}).update(given)
    changes = _edit(db, edits, "csv", add_values)[0] if edits else []
    return ImportReport(csv=str(csv), rows=len(frame), applied_rows=len(edits), changes=len(changes),
                        skipped=[str(s) for s in skipped])


def _cell(meta: IndexMeta, name: str, value: Any, multilabel: list[str] | tuple) -> Any:
    """A CSV cell as a client value: a tag group's `a|b` as a list."""
    a = meta.find_attribute(name)
    return split_tags(value) if (a.multi if a is not None else name in multilabel) else str(value).strip()


@guard_index
def export_labels(db: str | Path, out: str | Path) -> ExportReport:
    """The catalogue's current known labels as a labels CSV (`path` under the indexed folder, `split`, a column per
    labelled attribute with tags `a|b`, the free-text columns): every row with at least one known label."""
    db = location(db)
    meta = require_meta(db)
    labelled = [a for a in meta.attributes if a.has_labels]
    columns = ["rel", "split", *[a.label for a in labelled], *[text_column(t) for t in meta.text_columns]]
    table = read_columns(open_table(db), columns).to_pandas()
    known = table[[a.label for a in labelled]].ne("").any(axis=1) if labelled else table["rel"].eq("")
    table = table[known]
    out_frame = pd.DataFrame({"path": table["rel"], "split": table["split"]})
    for a in labelled:
        out_frame[a.name] = table[a.label].map(lambda v: join_tags(decode_tags(v))) if a.multi else table[a.label]
    for t in meta.text_columns:
        out_frame[t] = table[text_column(t)]
    atomic_write_text(out, out_frame.sort_values("path").to_csv(index=False))
    return ExportReport(path=str(out), format="csv", rows=len(out_frame), columns=list(out_frame.columns))


# ---------------------------------------------------------------- one edit, end to end


def _edit(db: Path, edits: dict[int, Mapping[str, Any]], source: str, add_values: bool, note: str = "",
          unchanged: bool = False) -> tuple[list[Change], IndexMeta]:
    """Check, record and apply label edits {rid: {attribute: value}} under the writer lock. A label already at
    its value makes no change, unless `unchanged` (a person kept it: recorded all the same)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {SOURCES}")
    with writer_lock(db, wait=EDIT_WAIT_S):
        meta = require_meta(db)
        table = open_table(db)
        history = LabelHistory(db, meta)
        meta = _replay(db, table, meta, history)
        checked = {}
        for rid, given in edits.items():  # one after another: an attribute the first row adds, the next one has
            checked[rid] = checked_labels(meta, given, add_values)
            meta = checked[rid].applied_to(meta)
        add_missing_columns(table, meta)
        current = _current(table, meta, list(checked))
        missing = sorted(set(checked) - set(current))
        if missing:
            raise NotFoundError(f"no row with id {missing[0]} in index {db}")
        wanted = [{"rid": rid, "rel": current[rid]["rel"], "attribute": name, "old": old, "new": value,
                   "source": source, "note": note}
                  for rid, c in checked.items() for name, value in c.stored.items()
                  if (old := current[rid][meta.attribute(name).label]) != value or unchanged]
        recorded = history.record(wanted) if wanted else []
        meta = replace(meta, label_changes=meta.label_changes + len(recorded))
        write_meta(db, meta)  # the vocabulary and the count, before the table: a cut write is replayed
        if recorded:
            _apply(table, meta, recorded)
            meta = replace(meta, labels_applied=recorded[-1].id)
            write_meta(db, meta)
        return recorded, meta


def _replay(db: Path, table, meta: IndexMeta, history: LabelHistory) -> IndexMeta:
    """Apply the recorded changes a cut-off edit did not write to the table."""
    pending = history.after(meta.labels_applied) if meta.label_changes > meta.labels_applied else []
    if not pending:
        return meta
    _apply(table, meta, pending)
    meta = replace(meta, labels_applied=pending[-1].id)
    write_meta(db, meta)
    return meta


def _current(table, meta: IndexMeta, rids: list[int]) -> dict[int, dict[str, Any]]:
    labelled = [a.label for a in meta.attributes if a.has_labels]
    rows = read_columns(table, ["rid", "rel", *labelled], where=f"rid IN ({', '.join(map(str, rids))})")
    return {r["rid"]: r for r in rows.to_pylist()}


def _apply(table, meta: IndexMeta, changes: list[Change]) -> None:
    """The changes' new values in the label columns of their rows, in one commit."""
    rows = _current(table, meta, sorted({c.rid for c in changes}))
    now = time.time_ns()
    for c in changes:
        rows[c.rid][meta.attribute(c.attribute).label] = c.new
    labelled = [a.label for a in meta.attributes if a.has_labels]
    schema = pa.schema([table.schema.field(n) for n in ["rid", *labelled, "changed_ns"]])
    data = pa.Table.from_pylist([{**{k: r[k] for k in ["rid", *labelled]}, "changed_ns": now} for r in rows.values()],
                                schema=schema)
    table.merge_insert("rid").when_matched_update_all().execute(data)
