"""The GPU paths on fashion12k, in one device call: bf16 training steps (NCHW vs channels_last), the fine-tune's
time and accuracy, and the index's encoding throughput. Without CUDA it says so and writes nothing.

The protocol was fixed before any GPU run. Every candidate is the fashion_finetune preset (the CPU recipe) with
the overrides in CANDIDATES, trained while the time budget lasts; the choices are made on `val` alone: the single
run with the best val mean accuracy, and the ensemble of every finished run (no choice among subsets, so nothing
for val to flatter). Those two are then looked at on `test` once, against the issue's floors, with their calibrated
ECE; then the single run encodes every image as `mhtag index` would (images/s).

    python benchmarks/gpu_pack.py                    # here: data and missing wheels into .gpu/ (60 MiB)
    # device tool: run(command="bash benchmarks/gpu_run.sh", carry=[".gpu"], timeout_s=570)
    python benchmarks/gpu.py --smoke                 # the whole protocol on a CPU, tiny: checks the script
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from fashion import DATA, HEADS, ROOT, TARGETS
from fashion_val import accuracy_and_f1

from mhtag.core.config import load_config, parse_overrides
from mhtag.core.runtime import autocast, setup
from mhtag.inference.encoder import load_encoder
from mhtag.models.backbones import create_backbone
from mhtag.training.ensemble import build_ensemble
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

# name -> overrides of the fashion_finetune preset, in the order they run (the budget may stop the list early)
CANDIDATES = {
    "recipe_seed0": {},
    "recipe_seed1": {"seed": 1},
    "recipe_seed2": {"seed": 2},
    "epochs10": {"epochs": 10},
    "size224": {"image_size": [224, 168]},
    "recipe_seed3": {"seed": 3},
}
SMOKE = {"image_size": [32, 24], "epochs": 1, "probe_epochs": 2, "batch_size": 16}  # a pipeline check, not a model
CHUNK_MB = 15  # the device tool brings back files of at most 16 MB


def step_throughput(size: list[int], layout: torch.memory_format, batch: int = 128, steps: int = 20) -> float:
    """Training images/s of the recipe's backbone alone (bf16 autocast, forward + backward + AdamW)."""
    net = create_backbone("efficientnet_lite2").cuda().to(memory_format=layout).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, *size, device="cuda").to(memory_format=layout)
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast(x.device):
            loss = net(x).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return round(batch * steps / (time.perf_counter() - t0), 1)


def subset_labels(data: Path, dest: Path, per_split: int = 48) -> Path:
    """The first rows of each split, for --smoke (paths stay relative to `data`, passed as the image root)."""
    df = pd.read_csv(data / "labels.csv")
    df.groupby("split", sort=False).head(per_split).to_csv(dest, index=False)
    return dest


def summary(heads: dict) -> dict:
    heads = accuracy_and_f1({h: heads[h] for h in HEADS if h in heads})
    return {"mean_accuracy": round(sum(h["accuracy"] for h in heads.values()) / len(heads), 4),
            "mean_macro_f1": round(sum(h["macro_f1"] for h in heads.values()) / len(heads), 4), "heads": heads}


def test_once(run: Path, labels: Path, images: Path) -> dict:
    result = evaluate(run, labels, images, split="test")
    acc = {h: round(result["heads"][h]["accuracy"], 4) for h in HEADS if h in result["heads"]}
    return {**summary(result["heads"]), "ece": {h: round(result["heads"][h]["ece"], 4) for h in acc},
            "ece_floor_p95": {h: round(result["heads"][h]["ece_floor_p95"], 4) for h in acc},
            "floors_met": {h: acc[h] >= f for h, f in TARGETS.items() if h in acc}}


def encode_throughput(run: Path, files: list[str], workers: int, batch: int) -> dict:
    encoder = load_encoder(run)
    sum(len(b.ok) for b in encoder.encode_files(files[:batch * 2], batch, workers))  # warm: workers, kernels
    t0 = time.perf_counter()
    n = sum(len(b.ok) for b in encoder.encode_files(files, batch, workers))
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": round(seconds, 2), "images_per_second": round(n / seconds, 1)}


def save(report: dict, results: Path) -> None:
    """gpu.json as far as the protocol got (a call cut off at its time limit still brings back the finished part),
    and its newest stage on the log."""
    (results / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({list(report)[-1]: report[list(report)[-1]]})[:2000], flush=True)


def split_file(path: Path, dest: Path, stem: str) -> list[str]:
    """`path` in pieces under the size the device tool brings back; `cat stem.part* > file` joins them."""
    data, size = path.read_bytes(), CHUNK_MB * 2**20
    names = [f"{stem}.part{i}" for i in range(0, (len(data) + size - 1) // size)]
    for i, name in enumerate(names):
        (dest / name).write_bytes(data[i * size:(i + 1) * size])
    return names


def train_candidates(report: dict, results: Path, common: dict, labels: Path, images: Path, runs_dir: Path,
                     deadline: float, most: int) -> dict[str, Path]:
    """Train CANDIDATES in order, each scored on val, until `most` have run or the deadline has passed."""
    runs: dict[str, Path] = {}
    for name, overrides in CANDIDATES.items():
        if time.monotonic() > deadline or len(runs) == most:
            report["candidates"][name] = {"overrides": overrides, "skipped": "time budget spent"}
            continue
        cfg = load_config("fashion_finetune", {**common, **overrides})
        t0 = time.monotonic()
        run = fit(cfg, labels, images, out=runs_dir / name)
        best = run.best or {"heads": {}}
        report["candidates"][name] = {
            "overrides": overrides, "seconds": round(time.monotonic() - t0, 1), "kept": run.kept,
            "epochs_run": len(run.history), "epoch_seconds": [round(h["seconds"], 1) for h in run.history],
            "val": summary(evaluate(runs_dir / name, labels, images, split="val")["heads"]),
            "val_finetune_best_epoch": summary(best["heads"]) if best["heads"] else None}
        runs[name] = runs_dir / name
        save(report, results)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--results", type=Path, default=None, help="default: benchmarks/results (--smoke: a temp dir)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--budget-minutes", type=float, default=4.5, help="start no candidate after this long")
    ap.add_argument("--run-minutes", type=float, default=2.0, help="each candidate's max_minutes")
    ap.add_argument("--bring-back", action="store_true", help="copy the chosen single run's best.pt, in pieces")
    ap.add_argument("--smoke", action="store_true", help="run on a CPU with tiny data and settings")
    ap.add_argument("--set", action="append", default=[], help="overrides for every candidate")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    setup()
    if not (torch.cuda.is_available() or args.smoke):
        print(json.dumps({"gpu": None, "skipped": "no CUDA device on this machine; nothing measured"}))
        return
    t_start = time.monotonic()
    scratch = tempfile.TemporaryDirectory()
    results = args.results or (Path(scratch.name) if args.smoke else ROOT / "benchmarks" / "results")
    labels, images = args.data / "labels.csv", args.data
    if args.smoke:
        labels, args.runs = subset_labels(args.data, Path(scratch.name) / "labels.csv"), Path(scratch.name) / "runs"
    common = {"num_workers": args.workers, "report": False, "max_minutes": args.run_minutes,
              **(SMOKE if args.smoke else {}), **parse_overrides(args.set)}
    results.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "smoke": args.smoke, "common_overrides": common}
    if torch.cuda.is_available():
        size = load_config("fashion_finetune").image_size
        report["train_step_images_per_second"] = {
            "nchw": step_throughput(size, torch.contiguous_format),
            "channels_last": step_throughput(size, torch.channels_last)}
        save(report, results)

    report["candidates"] = {}
    runs = train_candidates(report, results, common, labels, images, args.runs,
                            deadline=t_start + args.budget_minutes * 60, most=2 if args.smoke else len(CANDIDATES))

    single = max(runs, key=lambda n: (report["candidates"][n]["val"]["mean_accuracy"],
                                      report["candidates"][n]["val"]["mean_macro_f1"]))
    report["chosen_on_val"] = {"single": single}
    report["test"] = {"single": test_once(runs[single], labels, images)}
    save(report, results)
    if len(runs) > 1:
        t0 = time.monotonic()
        built = build_ensemble(list(runs.values()), labels, images, out=args.runs / "ensemble")
        report["ensemble"] = {"members": list(runs), "seconds": round(time.monotonic() - t0, 1),
                              "val": summary(built["val"]["ensemble"])}
        report["test"]["ensemble"] = test_once(args.runs / "ensemble", labels, images)
        save(report, results)
    files = [str(images / p) for p in pd.read_csv(labels)["path"]]
    report["encode"] = encode_throughput(runs[single], files, args.workers, 64 if args.smoke else 256)
    report["total_seconds"] = round(time.monotonic() - t_start, 1)
    if args.bring_back:
        report["brought_back"] = split_file(runs[single] / "best.pt", results, f"gpu_{single}_best.pt")
    save(report, results)
    print(json.dumps({k: report[k] for k in ("chosen_on_val", "test", "encode", "total_seconds")}, indent=2))


if __name__ == "__main__":
    main()
