"""Filtered vector search at scale, on both search engines: N synthetic 512-d rows in the real store, attribute
filters matching 50%, 5% and 0.1% of rows, queried through `mhtag.index.search.search` exactly as
`mhtag search --like` runs.

Reports a fresh process's start to its first answer (imports, opening the index, one query) and its memory, then
p50/p99 latency, recall@10 against exact search over the filtered rows, how many of the requested rows came
back, and the memory the process holds (RSS after the queries, and its peak). The vectors are a mixture of
2,000 Gaussian clusters, L2-normalised, because image embeddings are clustered (uniform random 512-d vectors have
no meaningful neighbours). Each engine runs in its own process, so its memory is its own:

    python benchmarks/search_engines.py --rows 1000000 --db /tmp/search1m --engine memory
    python benchmarks/search_engines.py --rows 1000000 --db /tmp/search1m --engine lance   # builds the ANN index
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

from mhtag.core.runtime import setup
from mhtag.index.ann import build_ann
from mhtag.index.meta import require_meta
from mhtag.index.search import search
from mhtag.index.synthetic import synthetic_vectors, write_synthetic_index

ROOT = Path(__file__).resolve().parents[1]
FILTERS = {"half": 2, "twenty": 20, "thousand": 1000}  # attribute -> number of values (row i has v{i % k})


def memory_mb() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1)}


FRESH = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from mhtag.index.search import search
q = np.load(sys.argv[2])
hit = search(sys.argv[1], vector=q, limit=10, engine=sys.argv[3])
first = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"start_to_first_answer_s": round(first, 2), "torch_imported": "torch" in sys.modules,
                  "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                  "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1), "returned": len(hit.results)}))
"""


def fresh_process(db: Path, query: np.ndarray, engine: str) -> dict:
    """A new process's start to its first answer (imports, opening the index, one search), and its memory."""
    import subprocess
    import sys

    qfile = db.parent / f"{db.name}-query.npy"
    np.save(qfile, query)
    out = subprocess.run([sys.executable, "-c", FRESH, str(db), str(qfile), engine], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def exact_answers(rows: int, dim: int, queries: np.ndarray, limit: int) -> dict[str, np.ndarray]:
    """Per filter case, each query's exact top `limit` row ids, streamed over the synthetic vectors a chunk at a
    time (10M x 512 floats would not fit beside the engine)."""
    cases = {"none (100%)": 1} | {f"{k} ({100 / n:g}%)": n for k, n in FILTERS.items()}
    best = {c: (np.full((len(queries), limit), -np.inf, np.float32), np.full((len(queries), limit), -1, np.int64))
            for c in cases}
    for start, x in synthetic_vectors(rows, dim):
        ids = np.arange(start, start + len(x))
        scores = x @ queries.T  # rows x queries
        for case, k in cases.items():
            keep = ids % k == 0
            s, i = scores[keep].T, ids[keep]
            if not len(i):
                continue
            top = np.argpartition(-s, min(limit, s.shape[1]) - 1, axis=1)[:, :limit]
            old_s, old_i = best[case]
            all_s = np.concatenate([old_s, np.take_along_axis(s, top, 1)], axis=1)
            all_i = np.concatenate([old_i, i[top]], axis=1)
            order = np.argsort(-all_s, axis=1)[:, :limit]
            best[case] = (np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1))
    return {c: i for c, (_, i) in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--engine", choices=["memory", "lance"], default="memory")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_engines.json")
    ap.add_argument("--db", type=Path, default=None, help="keep the synthetic index here and reuse it next time")
    ap.add_argument("--reuse-ann", action="store_true", help="lance: keep the ANN index already built in --db")
    args = ap.parse_args()
    setup()
    db = args.db or Path(tempfile.mkdtemp(prefix="mhtag-search-"))
    try:
        write_s = float("nan")
        if not (db / "meta.json").exists():
            t0 = time.perf_counter()
            write_synthetic_index(db, args.rows, args.dim, {k: [f"v{i}" for i in range(n)]
                                                            for k, n in FILTERS.items()})
            write_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        first = next(synthetic_vectors(args.rows, args.dim))[1]  # queries near rows of the first chunk
        queries = first[rng.choice(len(first), args.queries, replace=False)]
        queries += 0.05 * rng.normal(size=queries.shape).astype(np.float32)
        exact = exact_answers(args.rows, args.dim, queries, args.limit)
        t0 = time.perf_counter()
        ann = build_ann(db, require_meta(db)) if args.engine == "lance" and not args.reuse_ann else None
        index_s = time.perf_counter() - t0
        fresh = fresh_process(db, queries[0], args.engine)
        print("fresh process:", fresh, flush=True)
        baseline = memory_mb()  # the benchmark's own arrays (queries, exact answers) are in this already
        report = {"engine": args.engine, "rows": args.rows, "dim": args.dim, "limit": args.limit,
                  "queries_per_filter": args.queries, "cpu_threads": os.cpu_count(),
                  "write_seconds": round(write_s, 1), "ann_build_seconds": round(index_s, 1) if ann else None,
                  "ann": ann.vector_index if ann else ("reused" if args.reuse_ann else None),
                  "vector_bytes_mb": round(args.rows * args.dim * 4 / 2**20, 1), "fresh_process": fresh, "filters": {}}
        cases = {"none (100%)": {}} | {f"{k} ({100 / n:g}%)": {k: ["v0"]} for k, n in FILTERS.items()}
        for label, filt in cases.items():
            t0 = time.perf_counter()
            search(db, filt, vector=queries[0], limit=args.limit, source="label", engine=args.engine)
            first_ms = (time.perf_counter() - t0) * 1000  # the memory engine loads its snapshot here
            lat, results = [], []
            for q in queries:
                t = time.perf_counter()
                results.append(search(db, filt, vector=q, limit=args.limit, source="label", engine=args.engine))
                lat.append((time.perf_counter() - t) * 1000)
            recall, returned = [], []
            for res, top in zip(results, exact[label], strict=True):
                recall.append(len({r.id for r in res.results} & set(top.tolist())) / args.limit)
                returned.append(len(res.results))
            report["filters"][label] = {
                "matched_rows": results[0].matched, "first_query_ms": round(first_ms, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "recall_at_10": round(float(np.mean(recall)), 4), "min_returned": int(min(returned)),
                "all_returned_limit": bool(min(returned) == args.limit)}
            print(label, report["filters"][label], flush=True)
        now = memory_mb()
        report["memory"] = {**now, "held_by_engine_mb": round(now["rss_mb"] - baseline["rss_mb"], 1)}
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        if args.reuse_ann and args.engine in results:  # the index was built (and timed) by an earlier run
            report["ann_build_seconds"] = results[args.engine].get("ann_build_seconds")
        results[args.engine] = report
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps(report, indent=2))
    finally:
        if args.db is None:
            shutil.rmtree(db, ignore_errors=True)


if __name__ == "__main__":
    main()
