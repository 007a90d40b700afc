"""Shared fixtures: a tiny CNN backbone (registered like any other) and a small synthetic dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mhtag.core.runtime import setup
from mhtag.index.vectors import setup_faiss
from mhtag.models.backbones import _BACKBONES, Backbone, register_backbone

TESTS = Path(__file__).resolve().parent  # subprocess scripts put it on sys.path to import this module
SHARED = TESTS.parents[1] / "shared" / "datasets" / "fashion12k"
MHTAG = str(Path(sys.executable).with_name("mhtag"))  # the installed entry point
setup_faiss(setup())


def _tiny_body() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


if "tiny_cnn" not in _BACKBONES:
    @register_backbone
    def tiny_cnn(pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
        torch.manual_seed(0 if pretrained else 1)  # "pretrained" weights differ from an untrained start
        return Backbone(_tiny_body(), 32, {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
                                           "interpolation": "bilinear"}, "tiny_cnn")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MHTAG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """120 synthetic 32 px images with labels.csv (shape, colour, size, background, marks)."""
    from mhtag.data.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), n=120, px=32, seed=1)


@pytest.fixture
def tiny_cfg():
    from mhtag.core.config import load_config

    return load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "probe_epochs": 5,
                                  "epochs": 2, "batch_size": 16, "num_workers": 0, "mode": "probe",
                                  "report": False})


@pytest.fixture(scope="session")
def tiny_run(demo, tmp_path_factory):
    """A tiny_cnn probe trained on the demo data (session-wide: several index tests share it)."""
    from mhtag.core.config import load_config
    from mhtag.training.fit import fit

    cfg = load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "probe_epochs": 5,
                                 "num_workers": 0, "mode": "probe", "report": False})
    return fit(cfg, demo, out=tmp_path_factory.mktemp("run") / "run").dir


@pytest.fixture
def indexed(demo, tiny_run, tmp_path):
    """A fresh index of the demo images with the tiny model and the demo's known labels."""
    from mhtag.index.build import IndexOptions, index_images

    db = tmp_path / "db"
    report = index_images(demo.parent, db, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    return db, report


@pytest.fixture
def demo_copy(demo, tmp_path) -> Path:
    """A private copy of the demo data, for tests that change its files (the session's `demo` stays as made)."""
    import shutil

    shutil.copytree(demo.parent, tmp_path / "demo_copy")
    return tmp_path / "demo_copy" / "labels.csv"


BUCKET = "mhtag-test"


@pytest.fixture(scope="session")
def s3_options():
    """A local S3 endpoint (moto's server on a free localhost port) with one bucket, and the storage options
    (Lance's names) that reach it."""
    moto_server = pytest.importorskip("moto.server", reason="moto is a dev dependency: pip install -e '.[dev]'")
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log would land in captured outputs
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "aws_region": "us-east-1",
               "aws_endpoint": f"http://{host}:{port}", "allow_http": "true"}
    boto3.client("s3", endpoint_url=options["aws_endpoint"], aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield options
    server.stop()


def invoke(*args) -> str:
    """A command through Typer's CliRunner; it must succeed. Returns its output."""
    from typer.testing import CliRunner

    from mhtag import cli

    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def run_main(monkeypatch, capsys, *args) -> tuple[int, object]:
    """A command through `mhtag.cli.main` (the entry point's own error handling) in this process: (exit code,
    captured output)."""
    from mhtag import cli

    monkeypatch.setattr(sys, "argv", ["mhtag", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def run_cli(*args) -> subprocess.CompletedProcess:
    """Through the installed entry point, in a subprocess: the real Typer/click path."""
    return subprocess.run([MHTAG, *map(str, args)], capture_output=True, text=True, timeout=120)


AWKWARD = ["", "x " * 3000, "赤い丸のドレス", "Платье красное", "🙂 red 🙂"]  # captions that must work


@pytest.fixture(scope="session")
def captioned(tmp_path_factory):
    """The demo data with a product title per image (the attributes in words, and an item number), a `hue` column
    (the colour again, which no head learns), and a few awkward titles; a probe with a text tower learned from
    the titles, and an index of it."""
    import pandas as pd

    from mhtag.core.config import load_config
    from mhtag.data.labels import drop_unreadable, read_labels
    from mhtag.data.synthetic import make_demo_data
    from mhtag.index.build import IndexOptions, index_images
    from mhtag.training.captions import CaptionOptions, fit_text_tower
    from mhtag.training.fit import fit

    root = tmp_path_factory.mktemp("captioned")
    csv = make_demo_data(root, n=160, px=32, seed=3)
    frame = pd.read_csv(csv, keep_default_na=False)
    frame["title"] = [f"Item {i} {r.size} {r.colour} {r.shape}" for i, r in enumerate(frame.itertuples())]
    frame.loc[:len(AWKWARD) - 1, "title"] = AWKWARD
    frame["hue"] = frame["colour"]
    frame.to_csv(csv, index=False)
    cfg = load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "ignore": ["hue"],
                                 "probe_epochs": 5, "mode": "probe", "num_workers": 0, "report": False})
    run = fit(cfg, csv, out=root / "run")
    table = drop_unreadable(read_labels(csv, None, ["marks"]))
    report = fit_text_tower(table, run.model.backbone, run.dir,
                            CaptionOptions("title", epochs=40, lr=2e-3, width=64, layers=1, heads=2,
                                           context_length=16, min_count=5))
    db = root / "db"
    index_images(root, db, model=run.dir, labels=csv, options=IndexOptions(workers=0))
    return root, csv, run.dir, db, report
