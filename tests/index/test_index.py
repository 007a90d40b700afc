import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import TESTS

from mhtag.core.errors import MhtagError
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.meta import read_meta
from mhtag.index.store import open_table, read_columns, writer_lock
from mhtag.inference.fusion import TAU_GRID


def _rows(db):
    return sorted(read_columns(open_table(db), ["rel", "id"]).to_pylist(), key=lambda r: r["rel"])


def test_index_stores_one_row_per_image_with_predictions_and_known_labels(indexed, demo):
    db, report = indexed
    assert report.rows == report.added == 120 and not report.failed and report.has_heads
    row = read_columns(open_table(db), ["rel", "width", "height", "pred_colour", "conf_colour", "label_colour",
                                        "pred_marks", "label_marks", "split", "vector"]).to_pylist()[0]
    assert row["rel"].startswith("images/") and (row["width"], row["height"]) == (32, 32)
    assert row["pred_colour"] in {"red", "green", "blue", "yellow"}
    probs = read_columns(open_table(db), ["probs_colour"]).to_pylist()[0]["probs_colour"]
    assert abs(sum(probs) - 1) < 1e-4 and row["conf_colour"] == pytest.approx(max(probs))  # the top class's p
    assert row["label_colour"] in {"red", "green", "blue", "yellow"} and row["split"] in {"train", "val", "test"}
    assert abs(sum(v * v for v in row["vector"]) - 1) < 1e-4  # L2-normalised
    meta = read_meta(db)
    assert meta.dim == 32 and meta.backbone == "tiny_cnn" and meta.schema_version
    assert {a.name for a in meta.attributes if a.has_head and a.has_labels} == {
        "shape", "colour", "size", "background", "marks"}
    assert set(meta.fusion) == set(meta.fusion_tau) == {"shape", "colour", "size", "background", "marks"}
    assert set(meta.fusion_tau.values()) <= set(TAU_GRID)
    assert report.fusion == meta.fusion and report.fusion_tau == meta.fusion_tau


def test_same_bytes_with_a_new_mtime_or_new_labels_update_columns_without_embedding(demo_copy, tiny_run, tmp_path,
                                                                                      monkeypatch):
    """A re-mounted or copied catalogue (every mtime new, bytes the same) and an edited labels CSV update those
    columns in place; a same-size file with other bytes and a new mtime is still embedded again."""
    from PIL import Image

    from mhtag.inference.encoder import Encoder

    root, db = demo_copy.parent, tmp_path / "db"
    bmp = root / "images" / "extra.bmp"
    Image.new("RGB", (24, 24), "red").save(bmp)  # BMP: the file size depends on the pixel count only
    index_images(root, db, model=tiny_run, labels=demo_copy, options=IndexOptions(workers=0))
    columns = ["rel", "id", "vector", "mtime_ns", "label_colour", "split", "pred_colour"]
    before = {r["rel"]: r for r in read_columns(open_table(db), columns).to_pylist()}
    for f in (root / "images").iterdir():
        os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    lines = demo_copy.read_text().splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    rel, col = first[header.index("path")], header.index("colour")
    first[col] = next(c for c in ("red", "green", "blue", "yellow") if c != first[col])
    demo_copy.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    encoded = []
    real = Encoder.encode_files
    monkeypatch.setattr(Encoder, "encode_files", lambda self, paths, *a, **k: encoded.extend(paths) or
                        real(self, paths, *a, **k))
    r = index_images(root, db, labels=demo_copy, options=IndexOptions(workers=0))
    assert (r.added, r.updated, r.refreshed, r.unchanged, r.rows) == (0, 0, 121, 0, 121) and encoded == []
    after = {r["rel"]: r for r in read_columns(open_table(db), columns).to_pylist()}
    assert after[rel]["label_colour"] == first[col] != before[rel]["label_colour"]
    assert all(after[k]["vector"] == before[k]["vector"] and after[k]["pred_colour"] == before[k]["pred_colour"]
               and after[k]["mtime_ns"] == (root / k).stat().st_mtime_ns for k in before)
    again = index_images(root, db, labels=demo_copy, options=IndexOptions(workers=0))
    assert (again.refreshed, again.unchanged) == (0, 121)  # the new mtimes were stored
    size = bmp.stat().st_size
    Image.new("RGB", (24, 24), "blue").save(bmp)
    os.utime(bmp, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert bmp.stat().st_size == size
    changed = index_images(root, db, labels=demo_copy, options=IndexOptions(workers=0))
    assert (changed.updated, changed.refreshed, changed.unchanged) == (1, 0, 120)


def test_rerun_is_incremental_changed_files_reembed_and_prune_drops_deleted(demo_copy, tiny_run, tmp_path):
    root, db = demo_copy.parent, tmp_path / "db"
    index_images(root, db, model=tiny_run, labels=demo_copy, options=IndexOptions(workers=0))
    again = index_images(root, db, labels=demo_copy,
                         options=IndexOptions(workers=0))  # model defaults to the index's own
    assert (again.added, again.updated, again.unchanged, again.vanished) == (0, 0, 120, 0)
    img = root / "images" / "00003.png"
    shutil.copy(root / "images" / "00004.png", img)
    os.utime(img, ns=(time.time_ns(), time.time_ns() + 10**9))
    (root / "images" / "00005.png").unlink()
    kept = index_images(root, db, labels=demo_copy, options=IndexOptions(workers=0))
    assert (kept.updated, kept.vanished, kept.pruned, kept.rows) == (1, 1, 0, 120)
    r = index_images(root, db, labels=demo_copy, options=IndexOptions(workers=0, prune=True))
    assert (r.updated, r.pruned, r.rows) == (0, 1, 119)
    rows = {x["rel"]: x["id"] for x in _rows(db)}
    assert rows["images/00003.png"] == rows["images/00004.png"]  # content hash follows the new bytes


def test_corrupt_files_are_skipped_and_reported(tmp_path, tiny_run):
    from PIL import Image

    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(tmp_path / "imgs" / "ok.jpg")
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "imgs" / "sub" / "ok2.png")
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    (tmp_path / "imgs" / "text.png").write_text("not an image")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image extension")
    r = index_images(tmp_path / "imgs", tmp_path / "db", model=tiny_run, options=IndexOptions(workers=0))
    assert r.rows == 2
    assert sorted((os.path.basename(f.path), f.reason.split(" (")[0]) for f in r.failed) == [
        ("empty.jpg", "empty file"), ("text.png", "not an image")]


def test_another_backbone_is_refused_until_rebuild_and_new_heads_refresh_every_row(indexed, demo, tmp_path):
    db, _ = indexed
    other = _other_model(demo, tmp_path, "other", {"colour_histogram": 2})  # other features: another space
    with pytest.raises(MhtagError, match="does not match.*--rebuild"):
        index_images(demo.parent, db, model=other, options=IndexOptions(workers=0))
    r = index_images(demo.parent, db, model=other, options=IndexOptions(workers=0, rebuild=True))
    assert r.added == 120 and read_meta(db).model_path.startswith(str(other))
    heads = _other_model(demo, tmp_path, "heads", {"colour_histogram": 2, "seed": 3})  # same backbone, new heads
    before = {x["rid"]: x for x in read_columns(open_table(db), ["rid", "vector", "probs_colour"]).to_pylist()}
    r = index_images(demo.parent, db, model=heads, options=IndexOptions(workers=0))
    after = {x["rid"]: x for x in read_columns(open_table(db), ["rid", "vector", "probs_colour"]).to_pylist()}
    assert (r.added, r.updated, r.unchanged) == (0, 0, 120) and read_meta(db).model_path.startswith(str(heads))
    assert all(after[k]["vector"] == before[k]["vector"] for k in before)  # the vectors stay: one backbone
    assert all(after[k]["probs_colour"] != before[k]["probs_colour"] for k in before)  # every row's answer is new


def _other_model(demo, tmp_path, name, overrides):
    from mhtag.core.config import load_config
    from mhtag.training.fit import fit

    out = tmp_path / name
    if not (out / "best.pt").exists():
        fit(load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "probe_epochs": 2,
                                   "num_workers": 0, "mode": "probe", "seed": 7, **overrides}), demo, out=out)
    return out


def test_second_writer_fails_clearly(indexed, demo):
    db, _ = indexed
    with writer_lock(db), pytest.raises(MhtagError, match="another mhtag writer.*is writing"):
        index_images(demo.parent, db, options=IndexOptions(workers=0))


def test_without_a_model_only_embeddings_and_labels(demo, tmp_path, monkeypatch):
    monkeypatch.setattr("mhtag.index.build.DEFAULT_BACKBONE", "tiny_cnn")
    r = index_images(demo.parent, tmp_path / "db", labels=demo, options=IndexOptions(workers=0))
    meta = read_meta(tmp_path / "db")
    assert not r.has_heads and meta.model_id == "backbone:tiny_cnn"
    assert all(a.has_labels and not a.has_head for a in meta.attributes)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import conftest  # registers tiny_cnn
    from mhtag.index.build import IndexOptions, index_images
    from mhtag.inference.encoder import Encoder
    real = Encoder.encode_files
    def slow(*a, **kw):
        for batch in real(*a, **kw):
            time.sleep(0.1)
            yield batch
    Encoder.encode_files = slow
    index_images({root!r}, {db!r}, model={model!r}, labels={labels!r},
                 options=IndexOptions(batch_size=8, commit_every=16, workers=0))
""")


@pytest.mark.slow  # a subprocess that loads torch, killed mid-way
def test_killed_index_resumes_to_the_same_rows_as_a_clean_run(demo, tiny_run, tmp_path):
    clean = tmp_path / "clean"
    index_images(demo.parent, clean, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    db = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(TESTS), root=str(demo.parent), db=str(db),
                                model=str(tiny_run), labels=str(demo))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            if 0 < open_table(db).count_rows() < 120:
                break
        except MhtagError:
            continue  # table not created yet
        except Exception:  # noqa: BLE001 - the child may be mid-write; poll again
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_table(db).count_rows()
    assert 0 < partial < 120, partial
    r = index_images(demo.parent, db, labels=demo, options=IndexOptions(workers=0))
    assert r.unchanged == partial and r.added == 120 - partial
    assert _rows(db) == _rows(clean)  # same rows, no duplicate, none lost


def test_a_folder_of_symlinks_indexes_with_its_labels(demo, tiny_run, tmp_path):
    """Links pointing outside the folder are the user's choice; only `..` in a CSV path escapes the root."""
    links = tmp_path / "links" / "images"
    links.mkdir(parents=True)
    for i in range(10):
        (links / f"{i:05d}.png").symlink_to(demo.parent / "images" / f"{i:05d}.png")
    csv = tmp_path / "links" / "labels.csv"
    csv.write_text("\n".join(demo.read_text().splitlines()[:11]) + "\n")
    r = index_images(tmp_path / "links", tmp_path / "db", model=tiny_run, labels=csv, options=IndexOptions(workers=0))
    rows = read_columns(open_table(tmp_path / "db"), ["path", "label_colour"]).to_pylist()
    assert r.rows == 10 and all(x["label_colour"] for x in rows)
    assert all(x["path"].startswith(str(links)) for x in rows)  # the user's paths, not the link targets


TORCHRUN_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import conftest  # registers tiny_cnn
    from mhtag.index.build import IndexOptions, index_images
    r = index_images({root!r}, {db!r}, model={model!r}, labels={labels!r},
                     options=IndexOptions(workers=0, batch_size=16))
    import os
    if os.environ["RANK"] == "0":
        print("REPORT", r.model_dump_json())
""")


@pytest.mark.slow  # three processes that each import torch: about 15 s on 2 cores
def test_torchrun_shards_and_the_report_counts_every_rank(demo, tiny_run, tmp_path):
    """Two processes (gloo) index one table: the same rows as one process, and rank 0 reports all ranks' work."""
    db = tmp_path / "db"
    (tmp_path / "run.py").write_text(TORCHRUN_SCRIPT.format(tests=str(TESTS), root=str(demo.parent),
                                                            db=str(db), model=str(tiny_run), labels=str(demo)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(tmp_path / "run.py")], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.split("REPORT ", 1)[1].splitlines()[0])
    assert (report["added"], report["updated"], report["rows"]) == (120, 0, 120)
    clean = tmp_path / "clean"
    index_images(demo.parent, clean, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    assert _rows(db) == _rows(clean)


def test_an_index_of_another_format_or_damaged_meta_is_refused(indexed):
    db, _ = indexed
    meta = json.loads((db / "meta.json").read_text())
    (db / "meta.json").write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(MhtagError, match="format 2; this mhtag reads format 1.*--rebuild"):
        read_meta(db)
    (db / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "dim"}))
    with pytest.raises(MhtagError, match="damaged"):
        read_meta(db)
