"""What a hostile-but-fair user types: each case gets a clear message and the right exit code, never a
traceback or a silently wrong result."""

import json
import os
import pickle
import shutil

import pytest
import torch
from conftest import run_cli, run_main
from PIL import Image
from typer.testing import CliRunner

from mhtag import cli
from mhtag.core.errors import MhtagError
from mhtag.data.labels import read_labels
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.search import search
from mhtag.index.store import open_table, read_columns
from mhtag.models.checkpoint import load_checkpoint


@pytest.mark.parametrize("args", [("nosuchcmd",), ("search", "--limit", "abc"), ("index",),
                                  ("index", "x", "--foo"), ("predict", "x.png", "--k", "-5"),
                                  ("search", "--limit", "-1"), ("train", "--labels", "x.csv", "--mode", "fast")])
def test_usage_errors_print_usage_and_exit_2(args, monkeypatch, capsys):
    code, out = run_main(monkeypatch, capsys, *args)
    assert code == 2, out.err
    assert "Traceback" not in out.err and "Usage: mhtag" in out.err and "Error:" in out.err


def test_a_usage_error_through_the_installed_entry_point():
    r = run_cli("search", "--limit", "abc")
    assert r.returncode == 2 and "Usage: mhtag search" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_config_values_are_refused_before_a_run_folder_exists(monkeypatch, capsys, demo, tmp_path):
    for setting, words in (("probe_lr=.nan", "finite"), ("probe_epochs=-5", "at least 1"), ("dropout=1.5", "below")):
        code, out = run_main(monkeypatch, capsys, "train", "--labels", demo, "--set", setting,
                             "--out", tmp_path / "run")
        assert code == 1 and words in out.err and "Traceback" not in out.err
    code, out = run_main(monkeypatch, capsys, "train", "--labels", demo, "--lr", "nan", "--out", tmp_path / "run")
    assert code == 1 and "finite" in out.err
    assert not (tmp_path / "run").exists()


def test_each_schedule_flag_sets_its_own_field(demo, tmp_path):
    r = CliRunner().invoke(cli.app, ["train", "--labels", str(demo), "--backbone", "tiny_cnn", "--mode", "probe",
                                     "--multilabel", "marks", "--probe-epochs", "3", "--probe-lr", "0.02", "--epochs",
                                     "9", "--lr", "0.5", "--set", "num_workers=0", "--set", "report=false", "--out",
                                     str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]) == 3  # a probe: probe_epochs
    assert (config["probe_lr"], config["probe_epochs"], config["lr"], config["epochs"]) == (0.02, 3, 0.5, 9)


def test_ctrl_c_in_training_exits_130_and_says_what_was_kept(monkeypatch, capsys, demo, tmp_path):
    from mhtag.training import fit as loop

    real, calls = loop.train_one_epoch, {"n": 0}

    def interrupt_second(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", interrupt_second)
    code, out = run_main(monkeypatch, capsys, "train", "--labels", demo, "--backbone", "tiny_cnn", "--mode", "probe",
                         "--set", "num_workers=0", "--out", tmp_path / "run")
    assert code == 130 and "best.pt" in out.err and "--resume" in out.err
    assert "report" not in out.out and not (tmp_path / "run" / "report.html").exists()


def test_where_must_be_one_complete_expression(indexed):
    db, _ = indexed
    both = search(db, where="(pred_colour = 'red') AND (pred_shape = 'circle')", limit=500).matched
    assert both < search(db, where="pred_colour = 'red'", limit=500).matched
    for bad, why in (("pred_colour = 'red') AND (pred_shape = 'circle'", "closes nothing"),
                     ("1=1; DROP TABLE images", "';' is not allowed"), ("pred_colour = 'red", "never closed"),
                     ("width = 32 garbage", "could not be evaluated")):
        with pytest.raises(MhtagError, match=why):
            search(db, where=bad)
    assert open_table(db).count_rows() == 120


def test_verify_catches_same_size_content_with_the_mtime_restored(tiny_run, tmp_path):
    root, db = tmp_path / "imgs", tmp_path / "db"
    root.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (24, 24), colour).save(root / f"{i}.bmp")  # BMP: the size depends on the pixels' count only
    index_images(root, db, model=tiny_run, options=IndexOptions(workers=0))
    img = root / "0.bmp"
    stat = img.stat()
    Image.new("RGB", (24, 24), "yellow").save(img)
    os.utime(img, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert img.stat().st_size == stat.st_size
    assert index_images(root, db, options=IndexOptions(workers=0)).updated == 0  # size + mtime: looks unchanged
    r = index_images(root, db, options=IndexOptions(workers=0, verify=True))
    assert (r.updated, r.unchanged) == (1, 2)


def test_attribute_columns_that_collide_or_look_like_options(demo, tmp_path, tiny_run):
    lines = demo.read_text().splitlines()
    clash = tmp_path / "clash.csv"
    clash.write_text("\n".join([lines[0] + ",Shape"] + [x + ",big" for x in lines[1:]]) + "\n")
    with pytest.raises(MhtagError, match="'shape' and 'Shape' differ only in case"):
        read_labels(clash, demo.parent)
    odd = tmp_path / "odd.csv"
    odd.write_text("\n".join([lines[0] + ",limit,file,row"] +
                             [x + f",{'lo' if i % 2 else 'hi'},f{i % 3},r{i % 2}" for i, x in enumerate(lines[1:])]))
    table = read_labels(odd, demo.parent)
    assert {"limit", "file", "row"} <= set(table.attributes)  # no longer silently dropped
    db = tmp_path / "db"
    index_images(demo.parent, db, model=tiny_run, labels=odd, options=IndexOptions(workers=0))
    r = CliRunner().invoke(cli.app, ["search", "--db", str(db), "--filter", "limit=lo", "--source", "label",
                                     "--limit", "500", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["matched"] == 60


def test_one_rule_for_images_gifs_and_symlink_loops(tmp_path, tiny_run):
    from mhtag.data.images import walk_images

    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (20, 20), "green").save(root / "sub" / "a.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    walk = walk_images([root])
    assert sorted(p.name for p in walk.files) == ["a.png", "anim.gif"]
    assert len(walk.problems) == 1 and "symlink loop" in walk.problems[0][1]
    r = index_images(root, tmp_path / "db", model=tiny_run, options=IndexOptions(workers=0))
    assert r.rows == 2


def test_exif_rotated_images_store_their_upright_size(tmp_path, tiny_run):
    root = tmp_path / "imgs"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    Image.new("RGB", (80, 40), "red").save(root / "rot.jpg", exif=exif)
    index_images(root, tmp_path / "db", model=tiny_run, options=IndexOptions(workers=0))
    row = read_columns(open_table(tmp_path / "db"), ["width", "height"]).to_pylist()[0]
    assert (row["width"], row["height"]) == (40, 80)


def test_sheet_paths_are_checked_before_searching(indexed, tmp_path):
    db, _ = indexed
    runner = CliRunner()
    for sheet, words in ((tmp_path / "s.txt", "name it .jpg"), (tmp_path, "is a folder"),
                         (tmp_path / "no" / "dir" / "s.jpg", "does not exist")):
        r = runner.invoke(cli.app, ["search", "--db", str(db), "--sheet", str(sheet)])
        assert r.exit_code != 0 and words in str(r.exception)
    assert not (tmp_path / "no").exists()


def test_index_labels_and_meta_problems_are_one_line_errors(monkeypatch, capsys, demo, tmp_path, indexed):
    code, out = run_main(monkeypatch, capsys, "index", demo.parent, "--db", tmp_path / "x", "--labels",
                         tmp_path / "missing.csv")
    assert code == 1 and "does not exist" in out.err
    (tmp_path / "empty.csv").write_text("")
    code, out = run_main(monkeypatch, capsys, "index", demo.parent, "--db", tmp_path / "x", "--labels",
                         tmp_path / "empty.csv")
    assert code == 1 and "is empty" in out.err
    db, _ = indexed
    (db / "meta.json").write_text("{ broken")
    code, out = run_main(monkeypatch, capsys, "search", "--db", db)
    assert code == 1 and "index meta" in out.err and "damaged" in out.err and "--rebuild" in out.err


def test_predict_exit_codes_when_nothing_can_be_read(monkeypatch, capsys, indexed, tmp_path):
    db, _ = indexed
    (tmp_path / "bad.png").write_bytes(b"nope")
    code, out = run_main(monkeypatch, capsys, "predict", tmp_path / "bad.png", "--db", db)
    assert code == 1 and "none of the 1 input(s)" in out.err
    (tmp_path / "empty").mkdir()
    code, out = run_main(monkeypatch, capsys, "predict", tmp_path / "empty", "--db", db)
    assert code == 1 and "no image files" in out.err


def test_semicolon_csv_unmatched_rows_vanished_files_and_newlines(demo, tmp_path, tiny_run, monkeypatch, capsys):
    root = tmp_path / "cat"
    shutil.copytree(demo.parent / "images", root / "images")
    lines = demo.read_text().splitlines()
    semi = root / "labels.csv"
    semi.write_text("\n".join(x.replace(",", ";") for x in lines[:30]) + "\nimages/nothere.png;circle;red;small;"
                    "light;;train\n")
    odd = root / "images" / "new\nline.png"
    shutil.copy(root / "images" / "00001.png", odd)
    db = tmp_path / "db"
    code, out = run_main(monkeypatch, capsys, "index", root, "--db", db, "--model", tiny_run, "--labels", semi)
    assert code == 0 and "1 row(s) of" in out.err and "match no image" in out.err
    (root / "images" / "00002.png").unlink()
    code, out = run_main(monkeypatch, capsys, "index", root, "--db", db, "--labels", semi)
    assert "1 indexed file(s) no longer exist" in out.err
    code, out = run_main(monkeypatch, capsys, "search", "--db", db, "--limit", "500")
    assert code == 0 and "new\\nline.png" in out.out
    assert all(line.startswith(("1", "0", "colour", "shape")) or "row(s) match" in line for line in
               out.out.splitlines())


def test_a_replaced_model_is_named_as_changed(indexed, demo, tiny_run, tmp_path):
    """A model file replaced by one with other backbone weights is named as changed; one with other heads on the
    same backbone is accepted, and every row's answers are refreshed with it."""
    db, _ = indexed
    backup = tmp_path / "best.bak"
    shutil.copy(tiny_run / "best.pt", backup)
    try:
        state = torch.load(tiny_run / "best.pt", weights_only=True)
        state["thresholds"] = {k: [0.4] * len(v) for k, v in state["thresholds"].items()}
        torch.save(state, tiny_run / "best.pt")
        assert index_images(demo.parent, db, options=IndexOptions(workers=0)).unchanged == 120
        key = next(k for k in state["model"] if k.startswith("backbone."))
        state["model"][key] = state["model"][key] + 1
        torch.save(state, tiny_run / "best.pt")
        with pytest.raises(MhtagError, match="that file has changed since"):
            index_images(demo.parent, db, options=IndexOptions(workers=0))
    finally:
        shutil.copy(backup, tiny_run / "best.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mhtag-pwned",))


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path):
    if os.path.exists("/tmp/mhtag-pwned"):
        os.unlink("/tmp/mhtag-pwned")
    path = tmp_path / "best.pt"
    torch.save({"format": 1, "model": {}, "payload": _Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(MhtagError, match="refused to load"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/mhtag-pwned")
