"""Filtered vector search at scale: N synthetic 512-d rows in the real store, attribute filters matching
50%, 5% and 0.1% of rows, queried through `mhtag.search.search` exactly as `mhtag search --like` runs.

Reports p50/p99 latency, recall@10 against exact search over the filtered rows, and how many of the
requested rows came back. The vectors are a mixture of 2,000 Gaussian clusters, L2-normalised, because
image embeddings are clustered (uniform random 512-d vectors have no meaningful neighbours).

    python benchmarks/search_filtered.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mhtag.index.columns import StoredAttribute, arrow_schema
from mhtag.index.meta import IndexMeta, write_meta
from mhtag.index.search import search
from mhtag.index.store import open_table, snapshot

ROOT = Path(__file__).resolve().parents[1]
FILTERS = {"half": ("v0", 2), "twenty": ("v0", 20), "thousand": ("v0", 1000)}  # value, number of values


def synthetic(n: int, dim: int, seed: int, centres: int = 2000, chunk: int = 100_000):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = c[rng.integers(0, centres, m)] + 0.35 * rng.normal(size=(m, dim)).astype(np.float32)
        yield start, x / np.linalg.norm(x, axis=1, keepdims=True)


def build(db: Path, n: int, dim: int) -> tuple[np.ndarray, float]:
    attrs = [StoredAttribute(name, "single", name, [], False, True, [f"v{i}" for i in range(k)])
             for name, (_, k) in FILTERS.items()]
    meta = IndexMeta("synthetic", None, "synthetic", dim, {}, None, attrs)
    write_meta(db, meta)
    table = open_table(db, meta, create=True)
    schema = arrow_schema(meta)
    t0 = time.perf_counter()
    vectors = np.zeros((n, dim), np.float32)
    for start, x in synthetic(n, dim, seed=0):
        m = len(x)
        vectors[start:start + m] = x
        ids = np.arange(start, start + m)
        cols = {
            "rid": pa.array(ids, pa.int64()), "id": pa.array([""] * m), "path": pa.array([f"row{i}" for i in ids]),
            "rel": pa.array([f"row{i}" for i in ids]), "size": pa.array(np.zeros(m, np.int64)),
            "mtime_ns": pa.array(np.zeros(m, np.int64)), "width": pa.array(np.zeros(m, np.int32)),
            "height": pa.array(np.zeros(m, np.int32)), "split": pa.array(["train"] * m),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
        }
        for name, (_, k) in FILTERS.items():
            cols[f"label_{name}"] = pa.array([f"v{i % k}" for i in ids])
        table.add(pa.Table.from_pydict(cols, schema=schema))
    return vectors, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_filtered.json")
    ap.add_argument("--db", type=Path, default=None, help="keep the synthetic index here and reuse it next time")
    args = ap.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="mhtag-search-"))
    try:
        if args.db and (db / "meta.json").exists():  # reuse: regenerate the same vectors, skip the writes
            vectors = np.concatenate([x for _, x in synthetic(args.rows, args.dim, seed=0)])
            write_s = float("nan")
        else:
            vectors, write_s = build(db, args.rows, args.dim)
        t0 = time.perf_counter()
        vi = snapshot(db).vectors
        index_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        queries = vectors[rng.choice(args.rows, args.queries, replace=False)]
        queries = queries + 0.05 * rng.normal(size=queries.shape).astype(np.float32)
        report = {"benchmark": "filtered_search", "rows": args.rows, "dim": args.dim, "limit": args.limit,
                  "queries_per_filter": args.queries, "cpu_threads": os.cpu_count(),
                  "write_seconds": round(write_s, 1), "vector_index_build_seconds": round(index_s, 1),
                  "index_kind": "ivf" if vi.ivf is not None else "flat", "filters": {}}
        cases = {"none (100%)": []} | {f"{name} ({100 / k:g}%)": [(name, value)] for name, (value, k) in
                                       FILTERS.items()}
        for label, filt in cases.items():
            search(db, filt, vector=queries[0], limit=args.limit, source="label")  # warm caches
            lat, results = [], []
            for q in queries:  # time every query first; exact search for recall afterwards, so its BLAS
                t = time.perf_counter()  # threads never compete with the timed queries
                results.append(search(db, filt, vector=q, limit=args.limit, source="label"))
                lat.append((time.perf_counter() - t) * 1000)
            rows = np.arange(args.rows) if not filt else np.flatnonzero(
                np.arange(args.rows) % FILTERS[filt[0][0]][1] == 0)
            recall, returned = [], []
            for q, res in zip(queries, results, strict=True):
                got = {int(r["path"][3:]) for r in res.results}
                exact = rows[np.argsort(-(vectors[rows] @ q))[:args.limit]]
                recall.append(len(got & set(exact.tolist())) / min(args.limit, len(rows)))
                returned.append(len(res.results))
            matched = results[0].matched
            report["filters"][label] = {
                "matched_rows": matched, "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2), "recall_at_10": round(float(np.mean(recall)), 4),
                "min_returned": int(min(returned)), "all_returned_limit": bool(min(returned) == args.limit)}
            print(label, report["filters"][label], flush=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    finally:
        if args.db is None:
            shutil.rmtree(db, ignore_errors=True)


if __name__ == "__main__":
    main()
