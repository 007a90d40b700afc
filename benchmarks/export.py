"""`mhtag export` at scale: N synthetic rows (clustered 512-d vectors, three labelled attributes) exported to CSV,
Parquet and JSON Lines, all rows and a 5% filter, plus Parquet with the vectors. Each export runs in its own
process, so its peak memory is its own: streaming batch by batch should keep it far below the table's size.

    python benchmarks/export.py --rows 500000 --db /tmp/export500k
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = {"type": 20, "colour": 46, "season": 4}  # attribute -> number of values (row i has v{i % k})
CASES = [("csv", {}, False), ("csv", {"type": ["v0"]}, False), ("parquet", {}, False), ("parquet", {}, True),
         ("jsonl", {}, False)]


def peak_rss_mb() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return round(int(status["VmHWM"].split()[0]) / 1024, 1)


def one(db: Path, fmt: str, filters: dict, vectors: bool) -> dict:
    from mhtag.core.runtime import setup
    from mhtag.index.export import export_index

    setup()
    before = peak_rss_mb()  # the interpreter and libraries, before any row is read
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"rows.{fmt}"
        t0 = time.perf_counter()
        report = export_index(out, db, filters, vectors=vectors)
        seconds = time.perf_counter() - t0
        size = out.stat().st_size
    return {"format": fmt, "filter": filters or "none", "vectors": vectors, "rows": report.rows,
            "seconds": round(seconds, 2), "rows_per_second": round(report.rows / seconds),
            "file_mb": round(size / 2**20, 1), "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--db", type=Path, default=None, help="keep the synthetic index here and reuse it next time")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one case, as JSON
    args = ap.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="mhtag-export-"))
    if args.one:
        print(json.dumps(one(db, *json.loads(args.one))))
        return
    from mhtag.index.synthetic import write_synthetic_index

    write_s = None
    if not (db / "meta.json").exists():
        t0 = time.perf_counter()
        write_synthetic_index(db, args.rows, args.dim, {k: [f"v{i}" for i in range(n)]
                                                        for k, n in ATTRIBUTES.items()})
        write_s = round(time.perf_counter() - t0, 1)
    table_mb = round(sum(p.stat().st_size for p in db.rglob("*") if p.is_file()) / 2**20, 1)
    runs = []
    for case in CASES:
        child = subprocess.run([sys.executable, __file__, "--db", str(db), "--one", json.dumps(case)],
                               capture_output=True, text=True, check=True)
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    report = {"benchmark": "export", "rows": args.rows, "dim": args.dim, "table_mb_on_disk": table_mb,
              "write_seconds": write_s, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
