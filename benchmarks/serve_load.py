"""Load on `mhtag serve`, localhost only, bounded in count and time; it stops by itself.

Builds a synthetic index of 100k rows (clustered 1280-d vectors under the offline default backbone, three
labelled attributes), starts `mhtag serve` on a free localhost port in a subprocess, then runs 8 concurrent
clients for 30 s against `/api/search` (two filters and `like_id`), and against `/api/predict` with a
catalogue-sized JPEG (the default backbone plus the neighbours' vote). Reports p50/p99 latency, requests/s,
errors and the server's resident memory before and after. Prints JSON; writes benchmarks/results/serve_load.json.

    .venv/bin/python benchmarks/serve_load.py --rows 100000 --seconds 30 --clients 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

COLOURS = ["Black", "White", "Blue", "Red", "Green", "Grey", "Navy Blue", "Brown", "Pink", "Purple"]
TYPES = ["Tshirts", "Shirts", "Dresses", "Jeans", "Watches", "Shoes", "Bags", "Caps"]
SEASONS = ["Summer", "Winter", "Fall", "Spring"]


def build_index(db: Path, rows: int, dim: int = 1280, seed: int = 0) -> None:
    from mhtag.index.synthetic import write_synthetic_index
    from mhtag.inference.encoder import load_encoder

    enc = load_encoder(None)
    assert enc.dim == dim
    write_synthetic_index(db, rows, dim, {"type": TYPES, "colour": COLOURS, "season": SEASONS}, seed,
                          enc.model_id, enc.backbone, enc.data_config, random_labels=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def hammer(url: str, make_request, clients: int, seconds: float) -> dict:
    import httpx

    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        rnd = random.Random(k)
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                r = make_request(http, rnd)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if r.status_code != 200:
                        errors.append(r.status_code)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "requests_per_s": round(len(ms) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mhtag-load-"))
    db = work / "db"
    t0 = time.monotonic()
    build_index(db, args.rows)
    build_s = time.monotonic() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("mhtag")), "-q", "serve", "--db", str(db),
                               "--host", "127.0.0.1", "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        before = rss_mb(server.pid)
        ids = [str(i) for i in range(args.rows)]

        def search(http, rnd):
            body = {"filters": {"colour": [rnd.choice(COLOURS)], "season": [rnd.choice(SEASONS)]},
                    "like_id": rnd.choice(ids), "limit": 20, "facets": False}
            return http.post("/api/search", json=body)

        from PIL import Image

        photo = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(photo, "JPEG")
        jpeg = photo.getvalue()

        def predict(http, rnd):
            return http.post("/api/predict", files={"image": ("photo.jpg", jpeg, "image/jpeg")})

        out = {"rows": args.rows, "clients": args.clients, "seconds": args.seconds, "cores": os.cpu_count(),
               "index_build_s": round(build_s, 1), "server_rss_mb_before": before,
               "search_two_filters_like_id": hammer(url, search, args.clients, args.seconds),
               "predict_one_80x60_jpeg": hammer(url, predict, args.clients, args.seconds)}
        out["search_one_client"] = hammer(url, search, 1, min(10.0, args.seconds))
        out["predict_one_client"] = hammer(url, predict, 1, min(10.0, args.seconds))
        out["server_rss_mb_after"] = rss_mb(server.pid)
        out["note"] = "clients and server share the machine's cores (localhost)"
    finally:
        server.terminate()
        server.wait(10)
    print(json.dumps(out, indent=2))
    (Path(__file__).parent / "results" / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
