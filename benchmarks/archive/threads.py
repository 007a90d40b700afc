"""Two mhtag processes on one small machine: does each keep about half its speed, or do they spin?

Runs the offline default backbone's forward pass (batches of 16 at 128x128) for a fixed time in one process,
then in two at once, with OpenMP's default spin-waiting and with `OMP_WAIT_POLICY=PASSIVE` (what the `mhtag`
command sets). Prints JSON; writes benchmarks/results/threads.json.

    .venv/bin/python benchmarks/threads.py --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = """
import time, torch
from mhtag.core.runtime import setup
from mhtag.models.backbones import create_backbone
setup()
m = create_backbone("efficientnet_lite0").eval()
x = torch.rand(16, 3, 128, 128)
with torch.no_grad():
    m(x)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < {seconds}:
        m(x)
        n += 16
print(n / (time.monotonic() - t0))
"""


def run(processes: int, env: dict, seconds: float) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(seconds=seconds)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = {"cores": os.cpu_count(), "seconds": args.seconds}
    for name, env in (("spin (OpenMP default)", base), ("passive (mhtag's setting)", {**base,
                                                                                       "OMP_WAIT_POLICY": "PASSIVE"})):
        alone = run(1, env, args.seconds)[0]
        time.sleep(1)
        pair = run(2, env, args.seconds)
        out[name] = {"alone_images_per_s": round(alone, 1), "each_of_two_images_per_s": [round(p, 1) for p in pair],
                     "each_of_two_vs_alone": round(min(pair) / alone, 3)}
    print(json.dumps(out, indent=2))
    results = Path(__file__).parent / "results" / "threads.json"
    results.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
