"""`mhtag index --engine ray` on a local 2-CPU Ray: the same table as the local engine, and a run killed with -9
resumes with no lost and no duplicate row. The workers are separate processes, so the model is a real registered
backbone (Lite0 at 32 px), not the tests' in-process tiny_cnn."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.slow  # a local Ray cluster and its worker processes: in `pytest -m slow`

from mhtag.index.build import IndexOptions, index_images  # noqa: E402
from mhtag.index.store import open_table  # noqa: E402

LABEL_COLUMNS = ("rid", "id", "path", "rel", "split", "width", "height", "size")


@pytest.fixture(scope="module")
def lite_run(demo, tmp_path_factory):
    from mhtag.core.config import load_config
    from mhtag.training.fit import fit

    cfg = load_config(overrides={"multilabel": ["marks"], "image_size": [32, 32], "probe_epochs": 5,
                                 "mode": "probe", "report": False, "num_workers": 0})
    return fit(cfg, demo, out=tmp_path_factory.mktemp("lite") / "run").dir


@pytest.fixture(scope="module")
def local_ray():
    from mhtag.index.raydata import connect

    connect(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def local_table(demo, lite_run, tmp_path_factory):
    db = tmp_path_factory.mktemp("local") / "db"
    index_images(demo.parent, db, model=lite_run, labels=demo, options=IndexOptions(workers=0))
    return _rows(db)


def _rows(db) -> dict:
    arrow = open_table(db).to_arrow()
    rows = arrow.to_pylist()
    assert len({r["rid"] for r in rows}) == len(rows), "a row id appears twice"
    return {r["rid"]: r for r in rows}


def _assert_same_tables(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for rid, w in want.items():
        g = got[rid]
        for k in w:
            if k == "vector" or k.startswith("probs_") or k.startswith("conf_"):
                assert np.allclose(g[k], w[k], atol=1e-4), (rid, k)
            elif k != "mtime_ns":
                assert g[k] == w[k], (rid, k, g[k], w[k])


def test_ray_engine_writes_the_table_the_local_engine_writes(demo, lite_run, local_ray, local_table, tmp_path):
    report = index_images(demo.parent, tmp_path / "db", model=lite_run, labels=demo,
                          options=IndexOptions(engine="ray", batch_size=16, commit_every=32))
    assert report.added == len(local_table) and not report.failed
    _assert_same_tables(_rows(tmp_path / "db"), local_table)
    again = index_images(demo.parent, tmp_path / "db",
                         options=IndexOptions(engine="ray"))  # nothing changed: nothing to do
    assert again.added == 0 and again.unchanged == len(local_table)


def test_ray_engine_writes_a_table_on_object_storage(demo, lite_run, local_ray, local_table, s3_options,
                                                     monkeypatch):
    """The actors write fragments straight to the bucket with the storage options they were handed."""
    from mhtag.core.storage import STORAGE_OPTIONS_ENV

    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(s3_options))
    db = "s3://mhtag-test/ray"
    report = index_images(demo.parent, db, model=lite_run, labels=demo,
                          options=IndexOptions(engine="ray", batch_size=16, commit_every=32))
    assert report.added == len(local_table) and not report.failed
    _assert_same_tables(_rows(db), local_table)


def test_a_killed_ray_run_resumes_with_no_lost_and_no_duplicate_row(demo, lite_run, local_ray, local_table,
                                                                    tmp_path):
    db = tmp_path / "db"
    cmd = [sys.executable, "-c", "from mhtag.index.build import IndexOptions, index_images; "
           f"index_images({str(demo.parent)!r}, {str(db)!r}, model={str(lite_run)!r}, labels={str(demo)!r}, "
           "options=IndexOptions(engine='ray', batch_size=4, commit_every=8))"]
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": local_ray}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (db / "images.lance").is_dir() and open_table(db).count_rows() >= 16:  # two commits of rows landed
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed mid-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_table(db).count_rows()
    assert 0 < partial < len(local_table)
    report = index_images(demo.parent, db, labels=demo, options=IndexOptions(engine="ray", batch_size=16))
    assert report.unchanged == partial and report.added == len(local_table) - partial
    _assert_same_tables(_rows(db), local_table)
