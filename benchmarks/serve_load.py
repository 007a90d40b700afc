"""Load on `mhtag serve`, localhost only, bounded in count and time; it stops by itself.

Builds a synthetic index of 100k rows (clustered 1280-d vectors under the offline default backbone, three
labelled attributes), starts `mhtag serve --workers N` on a free localhost port in a subprocess, warms it for a few
seconds, then runs 8 concurrent clients for 30 s against `/api/search` (two filters and `like_id`, facets on, as the
API's default), and against `/api/predict` with a catalogue-sized JPEG (the default backbone plus the neighbours'
vote). Reports p50/p99 latency, requests/s, errors and the server's resident memory before and after. Prints JSON;
writes benchmarks/results/serve_load.json.

The clients are `wrk` (a C load generator: `apt-get install wrk`) where it is installed, so that on a 2-core
machine the clients take little of the CPU the server is measured on; else Python threads (httpx), which do.

    .venv/bin/python benchmarks/serve_load.py --rows 100000 --seconds 30 --clients 8 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
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


def reference_scan_ms(rows: int = 100_000, dim: int = 1280, share: float = 0.025) -> float:
    """This machine's speed right now, for reading the latencies: the median time of the search's own inner
    loop (FAISS, exact inner products over 2.5% of 100k x 1280 rows), measured alone before the load."""
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    pos = np.flatnonzero(rng.random(rows) < share).astype(np.int64)
    q = x[:1].copy()
    vals, ids = np.empty((1, 20), np.float32), np.empty((1, 20), np.int64)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), faiss.swig_ptr(x), faiss.swig_ptr(pos), dim, 1, rows,
                                        len(pos), 20, faiss.swig_ptr(vals), faiss.swig_ptr(ids), 0)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 2)


def bare_forward_images_per_s(jpeg: bytes, batch: int = 32, seconds: float = 10.0) -> float:
    """The backbone's own throughput on this image, batched (decoded once), alone on the machine: what the
    service's predictions are measured against."""
    from mhtag.core.runtime import setup
    from mhtag.data.images import decode_image
    from mhtag.inference.encoder import load_encoder

    setup()
    enc = load_encoder(None)
    images = [decode_image(jpeg, "photo.jpg")] * batch
    enc.encode_images(images)  # warm
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        enc.encode_images(images)
        done += batch
    return round(done / (time.perf_counter() - t0), 1)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(k) for k in children.read_text().split()] if children.exists() else []
    return round(rss_mb(pid) + sum(tree_rss_mb(k) for k in kids), 1)


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


SEARCH_LUA = """
local colours = {%(colours)s}
local seasons = {%(seasons)s}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = string.format('{"filters": {"colour": ["%%s"], "season": ["%%s"]}, "like_id": %%d, "limit": 20}',
    colours[math.random(#colours)], seasons[math.random(#seasons)], math.random(0, %(last_id)d))
  return wrk.format(nil, "/api/search", nil, body)
end
"""

UPLOAD_LUA = """
local f = io.open(os.getenv("MHTAG_LOAD_BODY"), "rb")
wrk.method = "POST"
wrk.path = "/api/predict"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"
"""

REPORT_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MHTAG {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def hammer_wrk(url: str, script: str, clients: int, seconds: float, work: Path, body: bytes | None = None) -> dict:
    """`wrk` with `clients` connections for `seconds`; the same figures as `hammer`."""
    lua = work / "load.lua"
    lua.write_text(script + REPORT_LUA)
    env = dict(os.environ)
    if body is not None:
        (work / "body.bin").write_bytes(body)
        env["MHTAG_LOAD_BODY"] = str(work / "body.bin")
    out = subprocess.run(["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{round(seconds)}s", "--timeout", "30s",
                          "-s", str(lua), url], capture_output=True, text=True, env=env, check=True).stdout
    r = json.loads(out.split("MHTAG ", 1)[1])
    return {"requests": r["requests"], "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
            "p50_ms": round(r["p50_us"] / 1000, 1), "p99_ms": round(r["p99_us"] / 1000, 1), "errors": r["errors"]}


def multipart(field: str, filename: str, data: bytes, content_type: str, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="`mhtag serve --workers`")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    args = ap.parse_args()
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk") is not None)
    reference_scan = reference_scan_ms()
    from PIL import Image

    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(photo, "JPEG")
    jpeg = photo.getvalue()
    bare = bare_forward_images_per_s(jpeg)
    work = Path(tempfile.mkdtemp(prefix="mhtag-load-"))
    db = work / "db"
    t0 = time.monotonic()
    build_index(db, args.rows)
    build_s = time.monotonic() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("mhtag")), "-q", "serve", "--db", str(db),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)],
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        before = tree_rss_mb(server.pid)
        ids = [str(i) for i in range(args.rows)]

        def search(http, rnd):
            body = {"filters": {"colour": [rnd.choice(COLOURS)], "season": [rnd.choice(SEASONS)]},
                    "like_id": rnd.choice(ids), "limit": 20}
            return http.post("/api/search", json=body)

        def predict(http, rnd):
            return http.post("/api/predict", files={"image": ("photo.jpg", jpeg, "image/jpeg")})

        if use_wrk:
            search_lua = SEARCH_LUA % {"colours": ", ".join(f'"{c}"' for c in COLOURS),
                                       "seasons": ", ".join(f'"{c}"' for c in SEASONS), "last_id": args.rows - 1}
            upload = multipart("image", "photo.jpg", jpeg, "image/jpeg", "mhtagload")
            upload_lua = UPLOAD_LUA % {"boundary": "mhtagload"}

            def run_search(clients, seconds):
                return hammer_wrk(url, search_lua, clients, seconds, work)

            def run_predict(clients, seconds):
                return hammer_wrk(url, upload_lua, clients, seconds, work, upload)
        else:
            def run_search(clients, seconds):
                return hammer(url, search, clients, seconds)

            def run_predict(clients, seconds):
                return hammer(url, predict, clients, seconds)

        out = {"rows": args.rows, "clients": args.clients, "seconds": args.seconds, "cores": os.cpu_count(),
               "workers": args.workers, "load_generator": "wrk" if use_wrk else "python threads (httpx)",
               "index_build_s": round(build_s, 1), "server_rss_mb_before": before,
               "reference_scan_ms": reference_scan, "bare_batched_forward_images_per_s": bare}
        run_search(args.clients, 5)  # warm-up: every worker has answered before the clock starts
        out["search_two_filters_like_id"] = run_search(args.clients, args.seconds)
        run_search(1, 2)  # the requests still queued from the 8-client run drain before the clock starts
        out["search_one_client"] = run_search(1, min(10.0, args.seconds))
        run_predict(args.clients, 5)
        out["predict_one_80x60_jpeg"] = run_predict(args.clients, args.seconds)
        out["predict_ratio_to_bare_forward"] = round(out["predict_one_80x60_jpeg"]["requests_per_s"] / bare, 2)
        run_predict(1, 3)
        out["predict_one_client"] = run_predict(1, min(10.0, args.seconds))
        out["server_rss_mb_after"] = tree_rss_mb(server.pid)
        out["note"] = ("clients and server share the machine's cores (localhost); memory is the server's "
                       "processes together")
    finally:
        server.terminate()
        server.wait(10)
    print(json.dumps(out, indent=2))
    (Path(__file__).parent / "results" / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
