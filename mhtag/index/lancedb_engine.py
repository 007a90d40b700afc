"""The LanceDB engine, for tables that do not fit in RAM (or live on object storage): nothing is loaded whole.

A query is one LanceDB prefiltered vector search: the filter runs first (on the scalar indexes `index.ann` builds),
the IVF_PQ partitions are probed for the rows that pass, and the PQ distances are re-ranked on the full vectors. A
selective filter (at most EXACT_MAX_MATCHES rows) is answered by an exact scan of the rows that pass; and if the
probed partitions hold fewer than `n` passing rows, the query runs again that way, so `n` rows come back whenever
that many match, as with the in-memory engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mhtag.index.columns import PROBS
from mhtag.index.engine import Resolved, query_vector, tally
from mhtag.index.sql import all_of, check_where, count_rows, filter_sql
from mhtag.index.store import open_table

# Measured on 1M x 512 clustered vectors: nprobes 32 with 10x re-ranking gave recall@10 .37, 64 with 50x .995
NPROBES = 64
REFINE_FACTOR = 50  # re-rank 50x `n` PQ candidates on their full vectors
# A filter passing at most this many rows is answered exactly (their vectors read through the scalar indexes):
# on 1M rows a 1,000-row filter through IVF_PQ reached recall@10 .80 only, its rows sitting in unprobed lists
EXACT_MAX_MATCHES = 20_000


def _columns(table) -> list[str]:
    return [n for n in table.schema.names if n != "vector" and not n.startswith(PROBS)]


class LanceEngine:
    """The `Engine` over LanceDB's own indexes (see the module docstring)."""

    def __init__(self, r: Resolved, nprobes: int = NPROBES):
        self.r, self.nprobes = r, nprobes
        q = r.query
        self.where = q.where
        self.sql = all_of(filter_sql(r.meta, r.filters, q.source, q.min_confidence, q.disputed),
                          check_where(q.where) if q.where else None)
        self.table = open_table(r.db)
        self._matched: int | None = None

    def count(self) -> int:
        if self._matched is None:
            self._matched = count_rows(self.r.db, self.sql, self.where)
        return self._matched

    def _scan(self, columns: list[str]) -> pa.Table:
        q = self.table.search().select(columns).limit(None)
        return (q.where(self.sql) if self.sql else q).to_arrow()

    def facets(self) -> dict[str, dict[str, int]]:
        """Per attribute, passing rows per value, scanning only the label and prediction columns."""
        out = {}
        for a in self.r.meta.attributes:
            cols = [c for c, has in ((a.label, a.has_labels), (a.pred, a.has_head)) if has]
            scan = self._scan(cols)
            values = scan.column(cols[0])
            if len(cols) == 2:
                values = pc.if_else(pc.equal(values, ""), scan.column(cols[1]), values)
            counted = pc.value_counts(values).to_pylist()
            out[a.name] = tally(a, [c["values"] for c in counted], [c["counts"] for c in counted])
        return out

    def vector_of(self, rid: int) -> np.ndarray | None:
        got = self.table.search().where(f"rid = {int(rid)}").select(["vector"]).limit(1).to_arrow()
        return np.asarray(got.column("vector")[0].as_py(), dtype=np.float32) if got.num_rows else None

    def nearest(self, vector: np.ndarray, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        vector = query_vector(self.r.meta, self.r.db, vector).ravel()

        def run(exact: bool) -> pa.Table:
            q = self.table.search(vector, vector_column_name="vector")
            q = q.distance_type("cosine").limit(n).select(_columns(self.table) + ["_distance"])
            if self.sql:
                q = q.where(self.sql, prefilter=True)
            q = q.bypass_vector_index() if exact else q.nprobes(self.nprobes).refine_factor(REFINE_FACTOR)
            return q.to_arrow()

        matched = self.count()
        exact = matched <= EXACT_MAX_MATCHES
        got = run(exact)
        if not exact and got.num_rows < min(n, matched):  # the probed partitions held too few passing rows
            got = run(exact=True)
        return got.drop_columns(["_distance"]).to_pylist(), 1.0 - got.column("_distance").to_numpy()

    def rank(self, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The first `n` passing rows in the query's order (`Query.order` over a scan of its columns)."""
        names = self.r.sort_columns()
        scan = self._scan(["rid", *names])
        rids = scan.column("rid").to_numpy()
        order, score = self.r.query.order({c: scan.column(c).to_numpy(zero_copy_only=False) for c in names})
        order, score = order[:n], score[:n]
        if not len(order):
            return [], np.zeros(0)
        chosen = rids[order]
        rows = self.table.search().where(f"rid IN ({', '.join(str(int(r)) for r in chosen)})") \
            .select(_columns(self.table)).limit(None).to_arrow().to_pylist()
        by_rid = {r["rid"]: r for r in rows}
        return [by_rid[int(r)] for r in chosen], score
