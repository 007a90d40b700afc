"""Huge images against `mhtag serve`: the per-request pixel budget and the bounded decoding, localhost only.

Indexes 200 demo images (offline default backbone, known labels), starts `mhtag serve` on a free localhost port,
then sends (1) one request of eight 64-Mpx PNGs (1.6 MB of request, the adversarial pass's input: 42 s and
+2.3 GB before), (2) one request of one 64-Mpx PNG, (3) eight clients at once, each with one 64-Mpx PNG. Samples
the server's resident memory every 50 ms throughout. Prints JSON; writes benchmarks/results/upload_burst.json.

    .venv/bin/python benchmarks/upload_burst.py
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

RESULTS = Path(__file__).parent / "results"
MHTAG = str(Path(sys.executable).with_name("mhtag"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)


def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(buf, format="PNG")  # 64 Mpx; compresses to a few hundred kB
    return buf.getvalue()


def timed(client: httpx.Client, url: str, files) -> dict:
    t0 = time.perf_counter()
    r = client.post(url, files=files, timeout=300)
    return {"status": r.status_code, "seconds": round(time.perf_counter() - t0, 2),
            "answer": r.json().get("error", "ok")[:120]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mhtag-burst-"))
    subprocess.run([MHTAG, "-q", "make-demo-data", str(work / "demo"), "--n", "200"], check=True)
    subprocess.run([MHTAG, "-q", "index", str(work / "demo"), "--db", str(work / "db"), "--labels",
                    str(work / "demo" / "labels.csv"), "--multilabel", "marks"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([MHTAG, "-q", "serve", "--db", str(work / "db"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}/api/predict"
    out: dict = {}
    try:
        with httpx.Client() as client:
            for _ in range(600):
                try:
                    client.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            data = big_png()
            out["png_bytes"] = len(data)
            out["rss_start_mb"] = round(rss_mb(server.pid), 1)
            sampler = Sampler(server.pid)
            sampler.start()
            out["eight_in_one_request"] = timed(client, url, [("image", (f"{i}.png", data)) for i in range(8)])
            out["one_in_one_request"] = timed(client, url, [("image", ("one.png", data))])
            with ThreadPoolExecutor(8) as pool:
                t0 = time.perf_counter()
                answers = list(pool.map(lambda i: timed(httpx.Client(), url, [("image", (f"{i}.png", data))]),
                                        range(8)))
            out["eight_clients_at_once"] = {"statuses": [a["status"] for a in answers],
                                            "slowest_seconds": max(a["seconds"] for a in answers),
                                            "wall_seconds": round(time.perf_counter() - t0, 2)}
            sampler.running = False
            sampler.join()
            out["rss_peak_mb"] = round(sampler.peak, 1)
            out["rss_end_mb"] = round(rss_mb(server.pid), 1)
    finally:
        server.terminate()
        server.wait(30)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upload_burst.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
