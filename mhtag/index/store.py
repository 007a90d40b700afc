"""The image store: one LanceDB table (the source of truth), its single-writer lock, and an in-memory
snapshot of it for searching (rows plus a FAISS index over their vectors), reloaded when the table changes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mhtag.core.errors import BusyError, MhtagError
from mhtag.core.storage import is_remote, join, list_names, location, storage_options
from mhtag.index.columns import PROBS
from mhtag.index.meta import IndexMeta, current_meta
from mhtag.index.vectors import VectorIndex
from mhtag.index.vectorstore import ENGINE, VectorStore, row_keys

TABLE = "images"
DEFAULT_DB = Path("indexes/default")


@contextmanager
def writer_lock(db: str | Path, wait: float = 0.0) -> Iterator[None]:
    """One writer per database (processes and threads alike). A second writer waits up to `wait` seconds (a label
    edit waits for another), then fails with a clear message (a second `index` run fails at once). Object storage
    has no file lock: there Lance's commit keeps the table consistent (a conflicting commit fails) and running one
    writer at a time is the operator's part (see docs/scale.md)."""
    if is_remote(db):
        yield
        return
    Path(db).mkdir(parents=True, exist_ok=True)
    with open(Path(db) / ".lock", "a+") as fh:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                fh.seek(0)
                holder = fh.read().strip() or "?"
                raise BusyError(f"another mhtag writer (pid {holder}) is writing to {db}; wait for it to finish"
                                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def connect(db: str | Path):
    import lancedb

    return lancedb.connect(str(location(db)), storage_options=storage_options() or None)


def table_uri(db: str | Path) -> str:
    """The Lance dataset under the LanceDB table (what Lance's own writers and readers open)."""
    return join(db, f"{TABLE}.lance") if is_remote(db) else str(Path(db).resolve() / f"{TABLE}.lance")


def _has_table(conn) -> bool:
    return TABLE in conn.list_tables().tables


def open_table(db: str | Path, meta: IndexMeta | None = None, create: bool = False):
    conn = connect(db)
    if _has_table(conn):
        return conn.open_table(TABLE)
    if not create:
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`")
    return conn.create_table(TABLE, schema=meta.table_schema())


def add_missing_columns(table, meta: IndexMeta) -> list[str]:
    """Add the columns `meta` describes and the table lacks (labels or a head given to an index for the first
    time), empty: "" for text, 0 for numbers, an empty list for probabilities. Returns their names."""
    missing = [f for f in meta.table_schema() if f.name not in table.schema.names]
    if missing:
        table.add_columns(pa.schema(missing))
        empty = {f.name: "''" if pa.types.is_string(f.type) else "0" for f in missing if not pa.types.is_list(f.type)}
        if empty:
            table.update(values_sql=empty)
    return [f.name for f in missing]


def drop_table(db: str | Path) -> None:
    """The table gone, with the vectors stored for it."""
    conn = connect(db)
    if _has_table(conn):
        conn.drop_table(TABLE)
    if not is_remote(db):
        shutil.rmtree(Path(db) / ENGINE, ignore_errors=True)


def read_columns(table, columns: list[str], where=None) -> pa.Table:
    q = table.search().select(columns).limit(None)
    if where is not None:
        q = q.where(where, prefilter=True)
    return q.to_arrow()


def vectors_of(arrow: pa.Table, dim: int | None = None) -> np.ndarray:
    """The `vector` column as a float32 matrix (rows x `dim`, else the column's own size)."""
    col = arrow.column("vector").combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(col), dim or (len(flat) // max(len(col), 1))), dtype=np.float32)


@dataclass
class Snapshot:
    """One version of the table in memory, for searching: every column but the vectors and probabilities,
    and the vector index over the same rows in the same order. String columns are dictionary-encoded on
    first use, so a filter over a million rows is a table lookup on integer codes."""

    version: int
    rows: pa.Table
    vectors: VectorIndex
    _codes: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    _positions: dict[int, int] | None = None
    derived: dict[str, object] = field(default_factory=dict)  # views built from this version, e.g. voters

    def codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        """(code per row, distinct values) of a string column."""
        if column not in self._codes:
            enc = pc.dictionary_encode(self.rows.column(column)).combine_chunks()
            self._codes[column] = (enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist())
        return self._codes[column]

    def values_in(self, column: str, accept) -> np.ndarray:
        """Boolean mask of the rows whose value satisfies `accept(value)`, evaluated once per distinct value."""
        return coded_mask(*self.codes(column), accept)

    def position(self, rid: int) -> int | None:
        """Where the row with key `rid` is in this snapshot, or None."""
        if self._positions is None:
            self._positions = {int(r): i for i, r in enumerate(self.vectors.rids)}
        return self._positions.get(int(rid))


def coded_mask(codes: np.ndarray, vocab: list[str], accept) -> np.ndarray:
    """Rows (by `codes` into `vocab`) whose value satisfies `accept(value)`, called once per distinct value."""
    table = np.fromiter((accept(v) for v in vocab), dtype=bool, count=len(vocab))
    accepted = np.flatnonzero(table)
    if len(accepted) == 1:
        return codes == accepted[0]
    if len(accepted) <= 4:  # a few comparisons of integer codes beat a gather through the table
        mask = np.zeros(len(codes), dtype=bool)
        for code in accepted:
            mask |= codes == code
        return mask
    return table[codes]


@lru_cache(maxsize=2)
def _snapshot(db: str, key: tuple[int, int], dim: int) -> Snapshot:
    table = open_table(db)
    version = table.version
    names = [n for n in table.schema.names if n != "vector" and not n.startswith(PROBS)]
    rows = read_columns(table, names).combine_chunks()  # one chunk per column: cheap takes
    rids = rows.column("rid").to_numpy()
    index = vector_store(db).view(version, rids, row_keys(rids, rows.column("id")), LanceVectors(table, rids))
    return Snapshot(version, rows, index)


def vector_store(db: str | Path) -> VectorStore:
    """The index's persisted vectors (for a table on object storage: in a local cache folder)."""
    folder = _remote_cache(str(db)) if is_remote(db) else Path(db)
    meta = current_meta(db)
    return VectorStore(folder / ENGINE, meta.dim, meta.space or meta.model_id)


def sync_vectors(db: str | Path) -> None:
    """After a write: the vector store made current for the table's new version (see `index.vectorstore`)."""
    table = open_table(db)
    version = table.version
    keys = read_columns(table, ["rid", "id"])
    rids = keys.column("rid").to_numpy()
    vector_store(db).sync(version, row_keys(rids, keys.column("id")), LanceVectors(table, rids))


@dataclass
class LanceVectors:
    """The table's vectors by row position (scan order), for the vector store."""

    table: object
    rids: np.ndarray  # the rows' ids in scan order
    IN_CHUNK = 4096  # ids per `rid IN (...)` read

    def take(self, positions: np.ndarray) -> np.ndarray:
        if len(positions) > len(self.rids) // 10:  # a good share of the table: one scan
            return np.concatenate(list(self.blocks()))[positions]
        wanted = self.rids[positions]
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(wanted), self.IN_CHUNK):
            chunk = ", ".join(str(int(r)) for r in wanted[start:start + self.IN_CHUNK])
            got = read_columns(self.table, ["rid", "vector"], where=f"rid IN ({chunk})")
            found.update(zip(got.column("rid").to_pylist(), vectors_of(got), strict=True))
        return np.stack([found[int(r)] for r in wanted]) if len(wanted) else np.zeros((0, 0), np.float32)

    def blocks(self) -> Iterator[np.ndarray]:
        """Every row's vector in scan order, a batch at a time (checked against the rows' ids)."""
        seen = 0
        for batch in self.table.search().select(["rid", "vector"]).limit(None).to_batches():
            rids = batch.column("rid").to_numpy()
            if not np.array_equal(rids, self.rids[seen:seen + len(rids)]):
                raise MhtagError("the table changed while its vectors were read; try again")
            seen += len(rids)
            yield vectors_of(pa.Table.from_batches([batch]))


def _remote_cache(db: str) -> Path:
    """A local folder for what is derived from a remote table (its vector store)."""
    folder = Path.home() / ".cache" / "mhtag" / "remote" / hashlib.sha1(db.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def version_key(db: str | Path) -> tuple[int, int]:
    """Changes whenever a commit adds a manifest, far cheaper than opening the table: locally a stat and a
    listing; on object storage one listing (manifest names count down from 2^64, so the smallest is the newest)."""
    versions = join(db, f"{TABLE}.lance/_versions")
    try:
        if not is_remote(db):
            return os.stat(versions).st_mtime_ns, len(os.listdir(versions))
        names = list_names(versions)
        return min(int(n.split(".")[0]) for n in names if n.endswith(".manifest")), len(names)
    except (OSError, ValueError):
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`") from None


@lru_cache(maxsize=8)
def _rows(db: str, key: tuple[int, int]) -> int:
    return open_table(db).count_rows()


def table_rows(db: str | Path, version: tuple[int, int] | None = None) -> int:
    """The table's row count, read once per table version (`version`: a `version_key` the caller already took)."""
    return _rows(str(db), version or version_key(db))


_LOADING = threading.Lock()


def snapshot(db: str | Path, version: tuple[int, int] | None = None, dim: int | None = None) -> Snapshot:
    """The table as it is now; reloaded only when a write has made a new table version. One load at a time:
    the requests that arrive during a reload wait for it and share it, rather than each loading a copy.
    `version` and `dim`: what the caller already read (`version_key`, the meta), not looked up again."""
    version, dim = version or version_key(db), dim or current_meta(db).dim
    with _LOADING:
        return _snapshot(str(db), version, dim)
