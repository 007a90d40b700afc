"""Recipe ablations on fashion12k's validation split, side by side: reads the
benchmarks/results/fashion_val_<name>.json files that `fashion_val.py` (and `tta_flip_val.py`) wrote, writes
benchmarks/results/fashion_val_ablation[_finetune].json and prints it, then the README's markdown table.

    python benchmarks/ablation_table.py             # the probe's
    python benchmarks/ablation_table.py finetune    # the LP-FT fine-tune's
"""

from __future__ import annotations

import argparse
import json
import statistics

from fashion import HEADS, ROOT

RESULTS = ROOT / "benchmarks" / "results"
# name -> what differs from the baseline (the shipped the fashion_probe preset)
PROBE_ROWS = {
    "probe_b512": "baseline: 160x120 (the photos' 3:4), 80 epochs, no class weights, no smoothing",
    "abl_smooth01": "label smoothing 0.1",
    "abl_sqrt": "sqrt class weights",
    "abl_epochs40": "40 epochs",
    "abl_epochs160": "160 epochs",
    "abl_size128x96": "input 128x96 (the photos' own size)",
    "abl_size224x168": "input 224x168",
    "abl_size160sq": "input 160x160: letterboxed, padded to square",
    "probe_shared_drop": "batches of 256 at lr 3e-3 (the previous recipe)",
    "probe_nodrop": "batches of 256 at lr 3e-3, no dropout before the heads",
    "abl224_e80": "224x168, 80 epochs (seed 0)",
    "abl224_e80_seed1": "224x168, 80 epochs, seed 1",
    "abl224_e40": "224x168, 40 epochs (seed 0)",
    "abl224_e40_seed1": "224x168, 40 epochs, seed 1",
    "abl224_e50": "224x168, 50 epochs",
    "abl224_e40_lr01": "224x168, 40 epochs at lr 1e-2",
}

# the LP-FT settings of results/fashion_lpft.json, 2 epochs instead of 5 (a CPU epoch is 8.4 min)
FINETUNE_ROWS = {
    "ft2_base": "baseline: LP-FT, 2 epochs, 160x120, no class weights, no smoothing, no brightness/contrast on colour",
    "ft2_colour_jitter": "brightness/contrast jitter on the colour head too",
    "ft2_ema": "EMA of the weights, decay 0.995 a step",
    "ft2_smooth01": "label smoothing 0.1",
    "lpft_flip0": "5 epochs (the 48-minute run of the test table)",
    "lpft_flip1": "5 epochs, test-time horizontal flip",
    "lpft_lite1_flip0": "Lite1, 4 epochs (its 38-minute cap)",
    "lpft_lite1_flip1": "Lite1, 4 epochs, test-time horizontal flip",
    "lpft_128_bb1_e6": "128x96, backbone at the heads' lr (x1 instead of x0.3), 6 epochs (20 min)",
    "lpft_128_e8": "128x96, 8 epochs (29 min)",
}
TABLES = {"probe": (PROBE_ROWS, "fashion_val_ablation.json"),
          "finetune": (FINETUNE_ROWS, "fashion_val_ablation_finetune.json")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table", nargs="?", choices=list(TABLES), default="probe")
    rows, dest = TABLES[ap.parse_args().table]
    table = []
    for name, change in rows.items():
        path = RESULTS / f"fashion_val_{name}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        # the fine-tune's own figures, also where `keep: best-of` shipped the probe instead
        heads = record["finetune_best_epoch"]["heads"] if record.get("kept") == "probe" else record["heads"]
        table.append({"name": name, "change": change,
                      "mean_accuracy": round(statistics.mean(heads[h]["accuracy"] for h in HEADS), 4),
                      "mean_macro_f1": round(statistics.mean(heads[h]["macro_f1"] for h in HEADS), 4),
                      "accuracy": {h: heads[h]["accuracy"] for h in HEADS}})
    (RESULTS / dest).write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table, indent=2))
    short = {"masterCategory": "master", "subCategory": "sub", "articleType": "article", "baseColour": "colour"}
    print("\n| change (val) | mean acc | mean macro-F1 | " + " | ".join(short.get(h, h) for h in HEADS) + " |")
    print("|---|" + "---|" * (2 + len(HEADS)))
    for row in table:
        print(f"| {row['change']} | {row['mean_accuracy']:.4f} | {row['mean_macro_f1']:.4f} | "
              + " | ".join(f"{row['accuracy'][h]:.3f}" for h in HEADS) + " |")


if __name__ == "__main__":
    main()
