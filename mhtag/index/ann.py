"""Search on LanceDB's own indexes, for tables that do not fit in RAM: nothing is loaded whole.

`build_ann(db)` (`mhtag index --build-ann`) builds an IVF_PQ vector index (cosine) and scalar indexes on the
attribute columns: BITMAP on single-label label/prediction columns (few distinct values), BTREE on confidences and
`rid`. A query is one LanceDB prefiltered vector search (the filter runs first, on the scalar indexes; the IVF
partitions are probed for the rows that pass) with the PQ distances re-ranked on the full vectors. A selective
filter (at most EXACT_MAX_MATCHES rows) is answered by an exact scan of the rows that pass; and if the probed
partitions hold fewer than `limit` passing rows, the query runs again that way, so `limit` rows come back
whenever that many match, as with the in-memory engine.

Filter values reach SQL only after `resolve_filters` mapped them onto the index's own vocabulary, and they are
quoted as SQL strings (a `'` doubled), so a user's text is never SQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mhtag.core.errors import MhtagError
from mhtag.index.columns import PROBS, StoredAttribute
from mhtag.index.filters import Source, source_term
from mhtag.index.guard import guard_index
from mhtag.index.meta import IndexMeta
from mhtag.index.store import open_table

MIN_ANN_ROWS = 4096  # below this a flat scan is as fast, and PQ training has too few rows
# Measured on 1M x 512 clustered vectors: nprobes 32 with 10x re-ranking gave recall@10 .37, 64 with 50x .995
NPROBES = 64
REFINE_FACTOR = 50  # re-rank 50x `limit` PQ candidates on their full vectors
# A filter passing at most this many rows is answered exactly (their vectors read through the scalar indexes):
# on 1M rows a 1,000-row filter through IVF_PQ reached recall@10 .80 only, its rows sitting in unprobed lists
EXACT_MAX_MATCHES = 20_000


@dataclass
class AnnReport:
    rows: int
    vector_index: str  # "IVF_PQ" or "none (n rows: flat scan)"
    scalar_indexes: list[str]
    seconds: float


def sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _has_values(column: str, a: StoredAttribute, values: list[str]) -> str:
    if a.multi:  # tags are stored as |a|b|
        return " OR ".join(f"strpos({column}, {sql_string(f'|{v}|')}) > 0" for v in values)
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"


def filter_sql(meta: IndexMeta, filters: dict[str, list[str]], source: Source = Source.ANY,
               min_confidence: float | None = None, disputed: bool = False) -> str | None:
    """The SQL form of `search`'s filters (resolved values only), or None for no filter."""
    terms = []
    for name, values in filters.items():
        a = meta.attribute(name)

        def by_pred(a=a, values=values) -> str:
            hit = _has_values(a.pred, a, values)
            return hit if min_confidence is None else f"({hit}) AND {a.conf} >= {float(min_confidence)!r}"

        terms.append(source_term(a, source, lambda a=a, values=values: _has_values(a.label, a, values), by_pred,
                                 lambda a=a: f"{a.label} = ''", lambda x, y: f"({x}) OR ({y})",
                                 lambda x, y: f"({x}) AND ({y})"))
    if disputed:
        both = [a for a in meta.attributes if a.has_head and a.has_labels and (not filters or a.name in filters)]
        labelled_row = " OR ".join(f"{a.label} != ''" for a in meta.attributes if a.has_labels) or "false"

        def known(a: StoredAttribute) -> str:  # a tag group's empty label is "no tags" on a labelled row
            return labelled_row if a.multi else f"{a.label} != ''"

        terms.append(" OR ".join(f"(({known(a)}) AND {a.label} != {a.pred})" for a in both) or "false")
    return " AND ".join(f"({t})" for t in terms) or None


def all_of(*terms: str | None) -> str | None:
    kept = [f"({t})" for t in terms if t]
    return " AND ".join(kept) or None


def _columns(table) -> list[str]:
    return [n for n in table.schema.names if n != "vector" and not n.startswith(PROBS)]


def count(db: Path, where: str | None) -> int:
    return open_table(db).count_rows(where) if where else open_table(db).count_rows()


def nearest(db: Path, vector: np.ndarray, n: int, where: str | None, matched: int,
            nprobes: int = NPROBES) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The `n` rows passing `where` nearest to `vector` (cosine), and their similarities."""
    table = open_table(db)

    def run(exact: bool) -> pa.Table:
        q = table.search(np.asarray(vector, dtype=np.float32).ravel(), vector_column_name="vector")
        q = q.distance_type("cosine").limit(n).select(_columns(table) + ["_distance"])
        if where:
            q = q.where(where, prefilter=True)
        q = q.bypass_vector_index() if exact else q.nprobes(nprobes).refine_factor(REFINE_FACTOR)
        return q.to_arrow()

    exact = matched <= EXACT_MAX_MATCHES
    got = run(exact)
    if not exact and got.num_rows < min(n, matched):  # the probed partitions held too few passing rows
        got = run(exact=True)
    return got.drop_columns(["_distance"]).to_pylist(), 1.0 - got.column("_distance").to_numpy()


def vector_of(db: Path, rid: int) -> np.ndarray | None:
    got = open_table(db).search().where(f"rid = {int(rid)}").select(["vector"]).limit(1).to_arrow()
    return np.asarray(got.column("vector")[0].as_py(), dtype=np.float32) if got.num_rows else None


def ranked(db: Path, columns: list[str], n: int, where: str | None,
           order_of: Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The first `n` passing rows in the order `order_of(scan of rid + columns)` gives as (positions, scores)."""
    table = open_table(db)
    q = table.search().select(["rid", *columns]).limit(None)
    scan = (q.where(where) if where else q).to_arrow()
    rids = scan.column("rid").to_numpy()
    order, score = order_of(scan)
    order, score = order[:n], score[:n]
    if not len(order):
        return [], np.zeros(0)
    chosen = rids[order]
    rows = table.search().where(f"rid IN ({', '.join(str(int(r)) for r in chosen)})") \
        .select(_columns(table)).limit(None).to_arrow().to_pylist()
    by_rid = {r["rid"]: r for r in rows}
    return [by_rid[int(r)] for r in chosen], score


def facets(db: Path, meta: IndexMeta, where: str | None, top: int) -> dict[str, dict[str, int]]:
    """Per attribute, passing rows per value (the known label where there is one, else the prediction),
    scanning only the label and prediction columns."""
    table = open_table(db)
    out: dict[str, dict[str, int]] = {}
    for a in meta.attributes:
        cols = [c for c, has in ((a.label, a.has_labels), (a.pred, a.has_head)) if has]
        q = table.search().select(cols).limit(None)
        scan = (q.where(where) if where else q).to_arrow()
        values = scan.column(cols[0])
        if len(cols) == 2:
            values = pc.if_else(pc.equal(values, ""), scan.column(cols[1]), values)
        tallies: dict[str, int] = {}
        for item in pc.value_counts(values).to_pylist():
            for v in (item["values"].strip("|").split("|") if a.multi else [item["values"]]):
                if v:
                    tallies[v] = tallies.get(v, 0) + item["counts"]
        out[a.name] = dict(sorted(tallies.items(), key=lambda kv: (-kv[1], kv[0]))[:top])
    return out


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
