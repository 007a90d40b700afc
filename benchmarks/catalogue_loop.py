"""The catalogue loop on fashion12k -> benchmarks/results/catalogue_loop_<part>.json.

    python benchmarks/catalogue_loop.py embed     # (a) train (probe) -> index -> audit -> predict, forwards counted
    python benchmarks/catalogue_loop.py refresh   # (b) 100k rows: 50 API corrections, then retrain + refresh
    python benchmarks/catalogue_loop.py review    # (c) 5% flipped labels, 300 simulated reviews, retrained

(a) runs the four steps twice in one process: "before", each step with an empty feature store (what each command
did before the store: embed every image again), then "after", all four sharing one store. Every image that goes
through the backbone is counted. (b) and (c) start from the index (a) leaves in --work (run `embed` first).
(b) grows that index to 100k rows: each row copied with a little noise on its stored features and its vector (new
content hashes, so the copies are rows of their own). (c) measures test accuracy of heads retrained from the index:
on the clean labels, after flipping 5% of the train rows' articleType and baseColour labels (seeded; the flipped
labels arrive from a labels CSV, as a catalogue's own errors would), and after a simulated reviewer worked the
review queue from the top for 300 reviews: accepting a suggestion only where the original label says so, keeping
a label where it is the original, skipping the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

import mhtag.inference.encoder as encoder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fashion12k"
HEADS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
FLIPPED = ("articleType", "baseColour")


def say(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def count_forwards() -> Counter:
    """Every image file that goes through a backbone, by file (a wrapper around the one place that runs it)."""
    seen: Counter = Counter()
    real = encoder.embed_batches

    def counted(forward, files, *args, **kwargs):
        seen.update(files)
        return real(forward, files, *args, **kwargs)

    encoder.embed_batches = counted
    return seen


def use_cache(folder: Path) -> None:
    os.environ["MHTAG_CACHE"] = str(folder)


def subset_folder(data: Path, dest: Path, rows: int) -> Path:
    """A folder of symlinks to `rows` rows of the data (the same rows every time), with their labels."""
    if not (dest / "labels.csv").exists():
        frame = pd.read_csv(data / "labels.csv", dtype=str, keep_default_na=False).sample(rows, random_state=0)
        (dest / "images").mkdir(parents=True, exist_ok=True)
        for rel in frame["path"]:
            (dest / rel).symlink_to(data / rel)
        frame.to_csv(dest / "labels.csv", index=False)
    return dest


# ---------------------------------------------------------------- (a) one embedding per image


def four_steps(data: Path, work: Path, forwards: Counter, fresh_store_each_step: bool) -> dict:
    from mhtag.audit.labels import audit_labels
    from mhtag.core.config import load_config
    from mhtag.index.build import index_images
    from mhtag.index.predict import predict
    from mhtag.training.fit import fit

    labels = data / "labels.csv"
    test = pd.read_csv(labels, dtype=str, keep_default_na=False).query("split == 'test'")["path"]
    steps = {
        "train": lambda: fit(load_config("fashion_probe", {"report": False}), labels, out=work / "run"),
        "index": lambda: index_images(data, work / "db", model=work / "run", labels=labels),
        "audit": lambda: audit_labels(labels, data, model=work / "run"),
        "predict": lambda: predict([data / p for p in test], work / "db"),
    }
    out = {}
    for name, step in steps.items():
        if fresh_store_each_step:
            use_cache(work / f"cache_{name}")
        before, t0 = sum(forwards.values()), time.monotonic()
        step()
        out[name] = {"seconds": round(time.monotonic() - t0, 1), "images_embedded": sum(forwards.values()) - before}
        say(name, out[name])
    return out


def embed_once(args) -> dict:
    forwards = count_forwards()
    result = {}
    for mode, fresh in (("before", True), ("after", False)):
        work = args.work / mode
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if mode == "after":  # one store for the four steps (kept for parts b and c)
            shutil.rmtree(args.work / "cache", ignore_errors=True)
            use_cache(args.work / "cache")
        forwards.clear()
        steps = four_steps(args.data, work, forwards, fresh)
        result[mode] = {"steps": steps, "seconds": round(sum(s["seconds"] for s in steps.values()), 1),
                        "images_embedded": sum(forwards.values()), "distinct_images": len(forwards),
                        "most_embeddings_of_one_image": max(forwards.values())}
    result["speedup"] = round(result["before"]["seconds"] / result["after"]["seconds"], 2)
    return result


# ---------------------------------------------------------------- (b) 100k rows: corrections, retrain, refresh


def grown_index(source: Path, db: Path, rows: int, seed: int = 0) -> int:
    """A copy of the index at `source` grown to `rows` rows: copies of its rows with noise on their stored
    features (put in the feature store under new content hashes) and on their vectors."""
    import hashlib

    import pyarrow as pa

    from mhtag.index.columns import rid_for
    from mhtag.index.meta import require_meta
    from mhtag.index.store import open_table, read_columns
    from mhtag.inference.encoder import load_encoder
    from mhtag.inference.store import FeatureStore

    shutil.rmtree(db, ignore_errors=True)
    shutil.copytree(source, db)
    meta = require_meta(db)
    table = open_table(db)
    base = read_columns(table, table.schema.names)
    n = base.num_rows
    store = FeatureStore(load_encoder(meta.model_path).backbone_module)
    ids = base.column("id").to_pylist()
    found = store.get(ids)
    raw = np.stack([found[h] for h in ids])
    vectors = base.column("vector").combine_chunks().values.to_numpy().reshape(n, -1)
    rng = np.random.default_rng(seed)
    raw_noise, vec_noise = 0.02 * raw.std(0), 0.02 / np.sqrt(vectors.shape[1])
    copy = 1
    while table.count_rows() < rows:
        m = min(n, rows - table.count_rows())
        part = base.slice(0, m)
        new_ids = [hashlib.sha1(f"{h}:{copy}".encode()).hexdigest() for h in ids[:m]]
        paths = [f"{p}#copy{copy}" for p in part.column("path").to_pylist()]
        v = vectors[:m] + vec_noise * rng.standard_normal(vectors[:m].shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.put(new_ids, raw[:m] + raw_noise * rng.standard_normal(raw[:m].shape).astype(np.float32))
        columns = {"rid": pa.array([rid_for(p) for p in paths], pa.int64()), "id": pa.array(new_ids),
                   "path": pa.array(paths),
                   "rel": pa.array([f"copy{copy}/{r}" for r in part.column("rel").to_pylist()]),
                   "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])}
        for name, column in columns.items():
            field = part.schema.field(name)
            part = part.set_column(part.schema.get_field_index(name), field, column.cast(field.type))
        table.add(part)
        copy += 1
    return table.count_rows()


def corrections_then_refresh(args) -> dict:
    from fastapi.testclient import TestClient

    from mhtag.index.meta import require_meta
    from mhtag.index.store import open_table, read_columns
    from mhtag.server.app import create_app
    from mhtag.server.service import Settings

    use_cache(args.work / "cache")
    db = args.work / "db100k"
    t0 = time.monotonic()
    rows = grown_index(args.work / "after" / "db", db, args.rows)
    say(f"grown to {rows} rows in {time.monotonic() - t0:.0f}s")
    key = "b" * 32
    (args.work / "key").write_text(key)
    auth = {"Authorization": f"Bearer {key}"}
    client = TestClient(create_app(Settings(db=db, api_key_file=args.work / "key")), base_url="http://localhost")
    article = require_meta(db).attribute("articleType")
    labelled = read_columns(open_table(db), ["rid", article.label, "split"]).to_pandas()
    rng = np.random.default_rng(1)
    chosen = labelled[(labelled["split"] == "train") & labelled[article.label].ne("")].sample(50, random_state=1)
    values = article.label_values
    t_edit = time.monotonic()
    for rid, old in zip(chosen["rid"], chosen[article.label], strict=True):
        new = rng.choice([v for v in values if v != old])
        response = client.patch(f"/api/rows/{rid}", json={"labels": {"articleType": str(new)}}, headers=auth)
        assert response.status_code == 200, response.text
    last_correction = time.monotonic()
    model_before = client.get("/api/health").json()["model"]
    started = client.post("/api/retrain", headers=auth).json()
    assert started["state"] == "running", started
    while (status := client.get("/api/retrain").json())["state"] == "running":
        time.sleep(0.2)
    health = client.get("/api/health").json()
    served = client.post("/api/search", json={"limit": 5, "sort": "confidence"}).json()
    refreshed = time.monotonic()
    assert status["state"] == "done", status
    assert health["model"] != model_before and health["changes_since_model"] == 0 and served["results"]
    report = status["report"]
    return {"rows": rows, "corrections": 50, "corrections_seconds": round(last_correction - t_edit, 1),
            "seconds_from_last_correction_to_refreshed_predictions_served": round(refreshed - last_correction, 1),
            "goal_seconds": 60, "train_seconds": report["train_seconds"],
            "refresh_seconds": report["refresh_seconds"], "labelled_rows": report["labelled_rows"],
            "rows_refreshed": report["rows_refreshed"]}


# ---------------------------------------------------------------- (c) the loop's worth


def test_accuracy(db: Path, truth: pd.DataFrame) -> dict:
    from mhtag.index.meta import require_meta
    from mhtag.index.store import open_table, read_columns

    pred = {h: require_meta(db).attribute(h).pred for h in HEADS}
    rows = read_columns(open_table(db), ["rel", "split", *pred.values()]).to_pandas()
    test = rows[rows["split"] == "test"].set_index("rel")
    t = truth.set_index("path").loc[test.index]
    accuracy = {h: round(float((test[pred[h]] == t[h]).mean()), 4) for h in HEADS}
    return {"test_rows": len(test), "accuracy": accuracy, "mean": round(float(np.mean(list(accuracy.values()))), 4)}


def flipped_labels(truth: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, int]:
    rng = np.random.default_rng(seed)
    flipped = truth.copy()
    n = 0
    train = np.flatnonzero(truth["split"].to_numpy() == "train")
    for h in FLIPPED:
        values = sorted(truth.loc[truth["split"] == "train", h].unique())
        column = flipped.columns.get_loc(h)
        for i in rng.choice(train, int(round(share * len(train))), replace=False):
            flipped.iat[i, column] = rng.choice([v for v in values if v != truth.iat[i, column]])
            n += 1
    return flipped, n


def wrong_labels(db: Path, truth: pd.DataFrame) -> int:
    """Labels of the flipped attributes that the index holds and the original labels do not say."""
    from mhtag.index.meta import require_meta
    from mhtag.index.store import open_table, read_columns

    label = {h: require_meta(db).attribute(h).label for h in FLIPPED}
    rows = read_columns(open_table(db), ["rel", *label.values()]).to_pandas().set_index("rel")
    t = truth.set_index("path").loc[rows.index]
    return int(sum((rows[label[h]] != t[h]).sum() for h in FLIPPED))


def simulated_review(db: Path, truth: pd.DataFrame, reviews: int, attributes: tuple = (None,)) -> dict:
    """`attributes`: the queues worked in turn (None: the whole queue; names: each attribute's own queue, as the
    gallery's attribute filter shows it)."""
    from mhtag.catalogue.review import answer, review_queue

    original = truth.set_index("path")
    counts = Counter()
    skipped = Counter()
    t0 = time.monotonic()
    for n in range(reviews):
        attribute = attributes[n % len(attributes)]
        queue = review_queue(db, limit=1, offset=skipped[attribute], attribute=attribute)
        if not queue.items:
            break
        item = queue.items[0]
        right = original.at[item.rel, item.attribute]
        if item.suggested == right:
            answer(db, item.id, item.attribute, accept=True)
            counts[f"accepted_{item.attribute in FLIPPED}"] += 1
        elif item.given == right:
            answer(db, item.id, item.attribute, accept=False)
            counts["kept"] += 1
        else:
            skipped[attribute] += 1
            counts["skipped"] += 1
    return {"reviews": sum(counts.values()), "accepted": counts["accepted_True"] + counts["accepted_False"],
            "accepted_on_flipped_attributes": counts["accepted_True"], "kept": counts["kept"],
            "skipped": counts["skipped"], "seconds": round(time.monotonic() - t0, 1)}


def review_worth(args) -> dict:
    from mhtag.catalogue.retrain import retrain
    from mhtag.index.build import index_images

    use_cache(args.work / "cache")
    truth = pd.read_csv(args.data / "labels.csv", dtype=str, keep_default_na=False)
    db = args.work / "db_review"
    shutil.rmtree(db, ignore_errors=True)
    shutil.copytree(args.work / "after" / "db", db)
    result = {}
    retrain(db)
    result["clean"] = test_accuracy(db, truth)
    say("clean", result["clean"])
    flipped, n = flipped_labels(truth, 0.05, args.seed)
    flipped.to_csv(args.work / "flipped.csv", index=False)
    index_images(args.data, db, labels=args.work / "flipped.csv")
    retrain(db)
    result["flipped"] = {"labels_flipped": n, "wrong_labels": wrong_labels(db, truth), **test_accuracy(db, truth)}
    say("flipped", result["flipped"])
    attributes = FLIPPED if args.by_attribute else (None,)
    result["queue"] = "the flipped attributes' own queues, in turn" if args.by_attribute else "the whole queue"
    result["review"] = simulated_review(db, truth, args.reviews, attributes)
    say("review", result["review"])
    retrain(db)
    result["reviewed"] = test_accuracy(db, truth)
    say("reviewed", result["reviewed"])
    result["flipped_labels_left"] = wrong_labels(db, truth)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["embed", "refresh", "review"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "catalogue_loop")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--reviews", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=None, help="a smoke test: this many rows, every split")
    ap.add_argument("--by-attribute", action="store_true", help="review: work the flipped attributes' queues")
    ap.add_argument("--name", default=None, help="results file suffix (default: the part)")
    args = ap.parse_args()
    if args.subset:
        args.data = subset_folder(args.data, args.work / "subset", args.subset)
    run = {"embed": embed_once, "refresh": corrections_then_refresh, "review": review_worth}[args.part]
    result = {"benchmark": f"catalogue_loop_{args.part}", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              **run(args)}
    out = ROOT / "benchmarks" / "results" / f"catalogue_loop_{args.name or args.part}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
