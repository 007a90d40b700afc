import json
import subprocess
import sys

import pytest
from conftest import invoke, run_main
from typer.testing import CliRunner

from mhtag import cli

runner = CliRunner()


def test_demo_inspect_train_eval_through_the_cli(tmp_path):
    invoke("make-demo-data", tmp_path / "demo", "--n", 80, "--size", 32)
    labels = tmp_path / "demo" / "labels.csv"
    out = invoke("inspect", labels, "--multilabel", "marks")
    assert "shape [single]: 3 classes" in out and "marks [multi]" in out
    assert not (tmp_path / "demo" / "classes.png").exists()  # nothing lands among the images by default
    invoke("inspect", labels, "--multilabel", "marks", "--out", tmp_path / "health")
    health = json.loads((tmp_path / "health" / "health.json").read_text())
    assert health["rows"] == 80 and health["attributes"]["marks"]["kind"] == "multi"
    assert (tmp_path / "health" / "classes.png").stat().st_size > 1000
    invoke("train", "--labels", labels, "--multilabel", "marks", "--backbone", "tiny_cnn", "--mode", "probe",
           "--set", "probe_epochs=3", "--set", "num_workers=0", "--set", "report=false", "--out", tmp_path / "run")
    result = json.loads(invoke("eval", "--model", tmp_path / "run", "--labels", labels, "--json"))
    assert set(result) >= {"heads", "n"} and result["n"] == 16
    assert result["heads"]["shape"]["kind"] == "single" and result["heads"]["marks"]["kind"] == "multi"
    assert {"accuracy", "macro_f1", "balanced_accuracy", "top3_accuracy", "ece"} <= set(result["heads"]["shape"])
    assert {"micro_f1", "macro_f1", "mAP", "exact_match", "hamming_accuracy"} <= set(result["heads"]["marks"])
    assert {"ece", "ece_uncalibrated"} <= set(result["heads"]["marks"]) & set(result["heads"]["shape"])
    out = invoke("eval", "--model", tmp_path / "run", "--labels", labels, "--report", tmp_path / "eval.html")
    assert "ece_uncalibrated" in out and f"report: {tmp_path / 'eval.html'}" in out
    assert (tmp_path / "eval.html").read_text().count("reliability diagram of") == 5


def test_inspect_reports_unreadable_files_and_duplicates(tmp_path):
    invoke("make-demo-data", tmp_path / "d", "--n", 20, "--size", 16)
    images = tmp_path / "d" / "images"
    (images / "00001.png").write_bytes(b"not a png")
    (images / "00003.png").write_bytes((images / "00002.png").read_bytes())
    health = json.loads(invoke("inspect", tmp_path / "d" / "labels.csv", "--json"))
    assert health["unreadable"] == [{"path": "images/00001.png", "reason": "not an image (unrecognised format)"}]
    assert ["images/00002.png", "images/00003.png"] in health["duplicates"]


def test_user_error_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    code, out = run_main(monkeypatch, capsys, "train", "--labels", tmp_path / "none.csv")
    assert code == 1
    assert out.err.strip() == f"error: labels file {tmp_path / 'none.csv'} does not exist"


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    from mhtag.core.errors import MhtagError

    monkeypatch.setattr(sys, "argv", ["mhtag", "--debug", "train", "--labels", str(tmp_path / "none.csv")])
    with pytest.raises(MhtagError):
        cli.main()


def test_bad_config_key_is_a_user_error(monkeypatch, capsys, tmp_path):
    code, out = run_main(monkeypatch, capsys, "train", "--labels", tmp_path / "x.csv", "--set", "epoch=3")
    assert code == 1 and "unknown config key 'epoch'" in out.err


def test_index_and_predict_through_the_cli(demo_copy, tiny_run, tmp_path):
    demo = demo_copy
    (demo.parent / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = invoke("index", demo.parent, "--db", tmp_path / "db", "--model", tiny_run, "--labels", demo,
                 "--workers", 0)
    assert "120 rows (120 new, 0 re-embedded, 0 unchanged, 0 pruned)" in out
    assert "broken.png" in out and "1 unreadable file(s) skipped" in out
    text = invoke("predict", demo.parent / "images" / "00003.png", "--db", tmp_path / "db")
    assert "00003.png" in text and "colour" in text and "head" in text and "neighbours" in text


@pytest.mark.slow
def test_commands_that_run_no_model_never_load_torch(indexed, demo, tmp_path):
    """Torch takes seconds to import: a search without a query image, an export, the cache report and the data
    check must not wait for it (a query image, training or indexing does)."""
    db, _ = indexed
    probe = ("import json, sys\nfrom mhtag.cli import main\nfor args in json.loads(sys.argv[1]):\n"
             "    sys.argv = ['mhtag', *args]\n    try:\n        main()\n    except SystemExit as exc:\n"
             "        assert not exc.code, (args, exc.code)\n"
             "    print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', args[0])\n")
    commands = [["search", "--db", str(db), "--colour", "red", "--facets"],
                ["export", str(tmp_path / "rows.csv"), "--db", str(db), "--shape", "circle"],
                ["cache"], ["inspect", str(demo), "--out", str(tmp_path / "health")]]
    run = subprocess.run([sys.executable, "-c", probe, json.dumps(commands)], capture_output=True, text=True,
                         timeout=120)  # one process, the commands one after another: torch stays out of all four
    assert run.returncode == 0, run.stderr
    for args in commands:
        assert f"torch not loaded {args[0]}" in run.stdout, (args, run.stdout[-300:])
