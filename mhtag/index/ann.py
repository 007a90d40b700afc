"""LanceDB's own indexes, for the LanceDB engine (`index.lancedb_engine`): `build_ann(db)` (`mhtag index
--build-ann`) builds an IVF_PQ vector index (cosine) and scalar indexes on the attribute columns: BITMAP on
single-label label/prediction columns (few distinct values), BTREE on confidences and `rid`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mhtag.core.errors import MhtagError
from mhtag.index.guard import guard_index
from mhtag.index.meta import IndexMeta
from mhtag.index.store import open_table

MIN_ANN_ROWS = 4096  # below this a flat scan is as fast, and PQ training has too few rows


@dataclass
class AnnReport:
    rows: int
    vector_index: str  # "IVF_PQ" or "none (n rows: flat scan)"
    scalar_indexes: list[str]
    seconds: float


@guard_index
def build_ann(db: str | Path, meta: IndexMeta, partitions: int | None = None) -> AnnReport:
    """Create (or refresh, after bulk appends) the vector and scalar indexes LanceDB searches with."""
    from lancedb.index import Bitmap, BTree, IvfPq

    t0 = time.monotonic()
    table = open_table(db)
    rows = table.count_rows()
    if rows < MIN_ANN_ROWS:
        vector_index = f"none ({rows} rows: a flat scan is as fast below {MIN_ANN_ROWS})"
    else:
        table.create_index("vector", config=IvfPq(distance_type="cosine",
                                                  num_partitions=partitions,  # None: LanceDB's own choice
                                                  num_sub_vectors=_sub_vectors(meta.dim)), replace=True)
        vector_index = "IVF_PQ"
    scalar = [("rid", BTree())]
    for a in meta.attributes:
        if a.has_head:
            scalar.append((a.conf, BTree()))
        if not a.multi:
            scalar += [(c, Bitmap()) for c, has in ((a.label, a.has_labels), (a.pred, a.has_head)) if has]
    for column, config in scalar:
        table.create_index(column, config=config, replace=True)
    return AnnReport(rows, vector_index, [c for c, _ in scalar], time.monotonic() - t0)


def _sub_vectors(dim: int) -> int:
    """PQ sub-vectors of 16 dimensions (LanceDB's guidance: dim / 16, the dimension divisible by it)."""
    for n in (dim // 16, dim // 8, dim // 4, dim // 2, 1):
        if n and dim % n == 0:
            return n
    raise MhtagError(f"cannot split {dim} dimensions into PQ sub-vectors")
