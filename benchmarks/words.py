"""Words on fashion12k -> benchmarks/results/words.json. A probe (the fashion_probe preset) and a text tower learned
from the `productDisplayName` captions of train (val chooses the epoch); test is looked at once, here:

- text -> image retrieval over the test images, each test item's own title as the query: R@1, R@10, median rank;
  baseline: BM25 (rank_bm25) over each test image's predicted attribute values (the heads' top-1 answers);
- attribute queries ("Women Black Handbags", from the (gender, baseColour, articleType) combinations of test
  with at least 3 items): precision@20 of the text search, beside the filter search over predicted attributes
  (rows whose three predictions match, most confident first);
- zero-shot accuracy on gender, articleType and baseColour from prompts, beside the probe's heads;
- describe: precision@5 of the described phrases against the words of each test item's own title, beside the
  words of the predicted attribute values.

    python benchmarks/words.py                       # trains the probe and the tower under runs/words
    python benchmarks/words.py --set epochs=25       # a caption option, chosen on val (see docs/words.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"
WORD = re.compile(r"\w[\w'-]*")
ZERO_SHOT = ("gender", "articleType", "baseColour")


def words(text: str) -> list[str]:
    return WORD.findall(str(text).lower())


def ranks_of(sims: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each query's own item (row i's item is column i), ties broken at random in
    expectation: BM25 over a few attribute words gives many items the same score, and counting only the strictly
    better ones would rank a tied item first."""
    own = sims[np.arange(len(sims)), np.arange(len(sims))]
    better, tied = (sims > own[:, None]).sum(1), (sims == own[:, None]).sum(1) - 1
    return better + tied / 2


def retrieval(ranks: np.ndarray) -> dict:
    return {"R@1": round(float((ranks < 1).mean()), 4), "R@10": round(float((ranks < 10).mean()), 4),
            "median_rank": float(np.median(ranks) + 1)}


def precision(right: np.ndarray, top: np.ndarray, k: int = 20) -> tuple[float, float]:
    """Precision@k of the rows `top` (best first, at most k), and the same out of the most it could be (a query
    with 5 relevant items scores 5/5, not 5/20)."""
    hits = right[top[:k]].sum()
    return hits / k, hits / min(k, right.sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "words")
    ap.add_argument("--set", action="append", default=[], help="a CaptionOptions field, NAME=VALUE")
    ap.add_argument("--val-only", action="store_true", help="choose settings: report val retrieval, no test")
    ap.add_argument("--name", default="words")
    ap.add_argument("--template", action="append", default=None, help="zero-shot prompt template (repeatable)")
    ap.add_argument("--reuse-tower", action="store_true", help="keep the text tower already trained in --work")
    ap.add_argument("--reuse-from", default=None, help="with --reuse-tower: the results file that trained it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from rank_bm25 import BM25Okapi

    from mhtag.core.config import load_config
    from mhtag.data.labels import drop_unreadable, read_labels
    from mhtag.inference.encoder import load_encoder
    from mhtag.inference.words import TEMPLATES, ZeroShot, describe, text_tower
    from mhtag.models.checkpoint import checkpoint_file
    from mhtag.training.captions import CaptionOptions, fit_text_tower, image_vectors
    from mhtag.training.fit import fit

    t0 = time.time()
    run = args.work / "probe"
    if not (run / "best.pt").exists():
        fit(load_config("fashion_probe", {"report": False}), args.data / "labels.csv", out=run)
    enc = load_encoder(run)
    table = drop_unreadable(read_labels(args.data / "labels.csv", args.data, []))
    fields = {k: type(getattr(CaptionOptions, k))(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.reuse_tower and text_tower(checkpoint_file(run)) is not None:
        report = json.loads((ROOT / "benchmarks" / "results" / f"{args.reuse_from}.json").read_text())["tower"] \
            if args.reuse_from else {"reused": str(run)}
    else:
        options = CaptionOptions("productDisplayName", **fields)
        report = fit_text_tower(table, enc.backbone_module, run, options).__dict__
    tower = text_tower(checkpoint_file(run))
    templates = tuple(args.template) if args.template else TEMPLATES
    frame = table.frame
    images = image_vectors(table, enc.backbone_module)
    result = {"benchmark": args.name, "machine": f"{platform.machine()}, 2 cores", "tower": report,
              "templates": list(templates),
              "caption_options": {**CaptionOptions("productDisplayName", **fields).__dict__}}
    if args.val_only:
        split = "val"
    else:
        split = "test"
    rows = np.flatnonzero(frame["split"].to_numpy() == split)
    test, x = frame.iloc[rows].reset_index(drop=True), images[rows]
    titles = test["productDisplayName"].fillna("").astype(str).tolist()
    t = tower.encode(titles).numpy()
    result[f"{split}_images"] = len(test)
    result["text_to_image"] = retrieval(ranks_of(t @ x.T))

    import torch

    with torch.no_grad():
        probs = enc.tagger.probabilities(enc.tagger.forward_heads(
            torch.from_numpy(np.asarray(_raw(enc, table, rows)))))
    heads = [a.name for a in enc.tagger.schema.attributes]
    classes = {a.name: a.classes for a in enc.tagger.schema.attributes}
    predicted = {h: [classes[h][j] for j in probs[h].argmax(1).numpy()] for h in heads}
    docs = [sum((words(predicted[h][i]) for h in heads), []) for i in range(len(test))]
    bm25 = BM25Okapi(docs)
    bm = np.stack([bm25.get_scores(words(q)) for q in titles])
    result["bm25_predicted_attributes"] = retrieval(ranks_of(bm))

    combos = test.groupby(["gender", "baseColour", "articleType"]).size()
    combos = combos[combos >= 3].index.tolist()
    text_p, filter_p, text_c, filter_c = [], [], [], []
    conf = {h: probs[h].max(1).values.numpy() for h in heads}
    for g, c, a in combos:
        right = ((test["gender"] == g) & (test["baseColour"] == c) & (test["articleType"] == a)).to_numpy()
        q = tower.encode([f"{g} {c} {a}"]).numpy()[0]
        top = np.argsort(-(x @ q), kind="stable")[:20]
        at20, of_possible = precision(right, top)
        text_p.append(at20)
        text_c.append(of_possible)
        passed = np.flatnonzero((np.array(predicted["gender"]) == g) & (np.array(predicted["baseColour"]) == c)
                                & (np.array(predicted["articleType"]) == a))
        order = passed[np.argsort(-(conf["gender"] + conf["baseColour"] + conf["articleType"])[passed],
                                  kind="stable")][:20]
        at20, of_possible = precision(right, order)
        filter_p.append(at20)
        filter_c.append(of_possible)
    result["attribute_queries"] = {
        "queries": len(combos), "relevant_items_median": float(np.median([
            ((test["gender"] == g) & (test["baseColour"] == c) & (test["articleType"] == a)).sum()
            for g, c, a in combos])),
        "text_precision_at_20": round(float(np.mean(text_p)), 4),
        "filter_precision_at_20": round(float(np.mean(filter_p)), 4),
        "text_precision_at_20_of_possible": round(float(np.mean(text_c)), 4),
        "filter_precision_at_20_of_possible": round(float(np.mean(filter_c)), 4)}

    result["zero_shot"] = {}
    for h in ZERO_SHOT:
        values = sorted(frame.loc[frame["split"] == "train", h].unique())
        zs = ZeroShot(h, values, templates)
        p = zs.probabilities(tower, x)
        truth = test[h].to_numpy()
        zero = float((np.array(values)[p.argmax(1)] == truth).mean())
        result["zero_shot"][h] = {"values": len(values), "zero_shot_accuracy": round(zero, 4),
                                  "probe_head_accuracy": round(float((np.array(predicted[h]) == truth).mean()), 4)}

    described = describe(tower, x, 5)
    own = [set(words(tt)) for tt in titles]
    phrase_p = [np.mean([all(w in own[i] for w in p.split()) for p, _ in d]) for i, d in enumerate(described)]
    attr_words = [[w for h in heads for w in words(predicted[h][i])][:5] for i in range(len(test))]
    attr_p = [np.mean([w in own[i] for w in ws]) if ws else 0.0 for i, ws in enumerate(attr_words)]
    result["describe"] = {"phrases": len(tower.phrases), "precision_at_5": round(float(np.mean(phrase_p)), 4),
                          "predicted_attribute_words_precision_at_5": round(float(np.mean(attr_p)), 4)}
    result["seconds"] = round(time.time() - t0, 1)
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _raw(enc, table, rows) -> np.ndarray:
    """The rows' raw backbone features (from the feature store), as the heads take them."""
    from mhtag.data.labels import FILE, SHA1
    from mhtag.inference.encoder import stored_features

    frame = table.frame.iloc[rows]
    return stored_features(enc.backbone_module, frame[FILE].tolist(), frame[SHA1].tolist())


if __name__ == "__main__":
    main()
