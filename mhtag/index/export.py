"""An index's rows as a file for other tools: per attribute the answer (the known label where there is one,
else the prediction), the known label, the prediction and its confidence, under the names a search hit uses.
CSV, Parquet or JSON Lines, streamed from LanceDB batch by batch (a table larger than RAM exports too) into a
temporary file that replaces the target only when complete. The same filters as `search` select the rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_path
from mhtag.core.progress import progress_bar
from mhtag.core.storage import location
from mhtag.data.schema import TAG_SEP
from mhtag.index.columns import StoredAttribute, text_column
from mhtag.index.guard import guard_index
from mhtag.index.meta import IndexMeta, current_meta
from mhtag.index.neighbours import fuse_rows
from mhtag.index.query import Filters, Query
from mhtag.index.search import resolve_filters
from mhtag.index.sql import all_of, check_where, count_rows, filter_sql
from mhtag.index.store import DEFAULT_DB, open_table, snapshot
from mhtag.results import ExportReport

EXPORT_FORMATS = ("csv", "parquet", "jsonl")
ROW_COLUMNS = ["rid", "path", "rel", "split", "width", "height"]
BATCH_ROWS = 8192


def export_format(out: str | Path, fmt: str | None = None) -> str:
    """`fmt`, else the format named by `out`'s suffix (.csv, .parquet, .jsonl)."""
    chosen = (fmt or Path(out).suffix.lstrip(".")).lower()
    if chosen not in EXPORT_FORMATS:
        raise MhtagError(f"{out}: give the format ({', '.join(EXPORT_FORMATS)}), by the file's suffix or by "
                         f"--format; {chosen or 'no suffix'!r} is not one")
    return chosen


@guard_index
def export_index(out: str | Path, db: str | Path = DEFAULT_DB, query: Query | Filters | None = None, *,
                 vectors: bool = False, fused: bool = False, fmt: str | None = None, overwrite: bool = False,
                 relative_paths: bool = False, progress: bool = False, **fields: Any) -> ExportReport:
    """Write the rows of index `db` that `query` selects (its filters, source, confidence floor, disputed rows and
    `where`, as `search` reads them; its ranking and page play no part) to `out`. Tag groups are `|`-joined text
    in CSV and lists of tags in Parquet and JSON Lines; `vectors` adds the embeddings (not in CSV); `fused` adds
    per attribute the fused answer and its confidence (the head mixed with the vote of the row's nearest labelled
    rows, as `predict` and the gallery give it: a neighbour search per row); `relative_paths` writes `path` as the
    path under the indexed folder (what the service sends)."""
    q = Query.of(query, **fields)
    out, fmt = Path(out), export_format(out, fmt)
    if vectors and fmt == "csv":
        raise MhtagError("vectors go in Parquet or JSON Lines files, not in CSV: use a .parquet or .jsonl name")
    if out.exists() and not overwrite:
        raise MhtagError(f"{out} exists: choose another name, or overwrite it on purpose")
    db = location(db)
    meta = current_meta(db)
    sql = all_of(filter_sql(meta, resolve_filters(meta, q.filters), q.source, q.min_confidence, q.disputed),
                 check_where(q.where) if q.where else None)
    total = count_rows(db, sql, q.where)
    convert = _converter(meta, as_lists=fmt != "csv", vectors=vectors, ids_as_text=fmt == "jsonl",
                         relative_paths=relative_paths)
    if fused:
        convert = _with_fused(convert, db, meta, as_lists=fmt != "csv")
    written, columns = 0, []
    with atomic_path(out) as tmp, _writer(tmp, fmt) as write, progress_bar("exporting", total, progress) as advance:
        for batch in _batches(db, meta, sql, vectors, fused):
            table = convert(batch)
            write(table)
            written, columns = written + table.num_rows, table.column_names
            advance(table.num_rows)
        if not columns:  # no row passed: still a file with the columns (a CSV header)
            table = convert(open_table(db).schema.empty_table().select(_source_columns(meta, vectors, fused)))
            write(table)
            columns = table.column_names
    return ExportReport(path=str(out), format=fmt, rows=written, columns=columns)


def _source_columns(meta: IndexMeta, vectors: bool, fused: bool = False) -> list[str]:
    stored = [c for a in meta.attributes for c in ([a.label] if a.has_labels else []) +
              ([a.pred, a.conf] if a.has_head else []) + ([a.probs] if fused and a.has_head else [])]
    return ROW_COLUMNS + stored + [text_column(t) for t in meta.text_columns] + (["vector"] if vectors else [])


def _batches(db: Path, meta: IndexMeta, sql: str | None, vectors: bool, fused: bool) -> Iterator[pa.RecordBatch]:
    q = open_table(db).search().select(_source_columns(meta, vectors, fused)).limit(None)
    yield from (q.where(sql, prefilter=True) if sql else q).to_batches(BATCH_ROWS)


def _converter(meta: IndexMeta, as_lists: bool, vectors: bool, ids_as_text: bool, relative_paths: bool
               ) -> Callable[[pa.RecordBatch | pa.Table], pa.Table]:
    """A function from a batch of stored columns to the exported table."""

    def tags(a: StoredAttribute, column: pa.Array) -> pa.Array:
        if not a.multi:
            return column
        joined = pc.utf8_trim(column, TAG_SEP)  # stored as |a|b|
        if not as_lists:
            return joined
        return pc.if_else(pc.equal(joined, ""), pa.scalar([], pa.list_(pa.string())),
                          pc.split_pattern(joined, TAG_SEP))

    def convert(batch: pa.RecordBatch | pa.Table) -> pa.Table:
        rid = batch.column("rid")
        cols: dict[str, pa.Array] = {"id": pc.cast(rid, pa.string()) if ids_as_text else rid}
        cols |= {name: batch.column(name) for name in ROW_COLUMNS[1:]}
        if relative_paths:
            cols["path"] = batch.column("rel")
        for a in meta.attributes:
            label = batch.column(a.label) if a.has_labels else None
            pred = batch.column(a.pred) if a.has_head else None
            answer = pred if label is None else label if pred is None else \
                pc.if_else(pc.equal(label, ""), pred, label)
            cols[a.name] = tags(a, answer)
            if label is not None:
                cols[f"{a.name}_label"] = tags(a, label)
            if pred is not None:
                cols[f"{a.name}_pred"] = tags(a, pred)
                cols[f"{a.name}_confidence"] = pc.round(pc.cast(batch.column(a.conf), pa.float64()), 4)
        cols |= {t: batch.column(text_column(t)) for t in meta.text_columns}
        if vectors:
            cols["vector"] = batch.column("vector")
        return pa.table(cols)

    return convert


def _with_fused(convert: Callable[[pa.RecordBatch | pa.Table], pa.Table], db: Path, meta: IndexMeta,
                as_lists: bool) -> Callable[[pa.RecordBatch | pa.Table], pa.Table]:
    """`convert` with `<a>_fused` and `<a>_fused_confidence` added per attribute (see `fuse_rows`)."""
    snap = snapshot(db)
    attributes = [a for a in meta.attributes if a.has_head or a.has_labels]

    def fused(batch: pa.RecordBatch | pa.Table) -> pa.Table:
        table = convert(batch)
        positions = np.array([snap.position(r) for r in batch.column("rid").to_pylist()], dtype=np.int64)
        heads = {a.name: _matrix(batch.column(a.probs), len(a.classes)) for a in attributes if a.has_head}
        for name, f in fuse_rows(db, meta, positions, heads, attributes).items():
            answers, confidence = f.answers()
            if f.attribute.multi and not as_lists:
                answers = [TAG_SEP.join(tags) for tags in answers]
            table = table.append_column(f"{name}_fused", pa.array(answers))
            table = table.append_column(f"{name}_fused_confidence", pa.array(np.round(confidence, 4)))
        return table

    return fused


def _matrix(column, width: int) -> np.ndarray:
    values = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
    flat = values.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, width)


@contextmanager
def _writer(path: Path, fmt: str) -> Iterator[Callable[[pa.Table], None]]:
    """`write(table)` appending to `path` in `fmt`; the first table fixes the columns."""
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as fh:
            yield lambda table: fh.writelines(json.dumps(row, ensure_ascii=False) + "\n"
                                              for row in table.to_pylist())
        return
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    writer = None

    def write(table: pa.Table) -> None:
        nonlocal writer
        if writer is None:
            writer = pacsv.CSVWriter(str(path), table.schema) if fmt == "csv" else \
                pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table)

    try:
        yield write
    finally:
        if writer is not None:
            writer.close()
