"""The feature store: one row per backbone and image content, reused by any subset, order, path or command, safe
with concurrent writers, pruned a backbone at a time by last use."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS
from PIL import Image
from typer.testing import CliRunner

import mhtag.inference.encoder as encoder
from mhtag import cli
from mhtag.core.io import cache_dir
from mhtag.inference.store import FEATURES, USED, FeatureStore, prune_store, store_usage
from mhtag.models.backbones import create_backbone


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MHTAG_CACHE", str(tmp_path / "cache"))  # empty, not the session's shared one


@pytest.fixture
def backbone():
    return create_backbone("tiny_cnn")


@pytest.fixture
def embedded(monkeypatch):
    """The files that went through a backbone (not answered from the store)."""
    calls = []
    real = encoder.embed_batches
    monkeypatch.setattr(encoder, "embed_batches", lambda f, fs, *a, **k: calls.extend(fs) or real(f, fs, *a, **k))
    return calls


def _images(demo: Path, start: int, n: int) -> list[str]:
    return [str(f) for f in sorted((demo.parent / "images").iterdir())[start:start + n]]


def test_any_subset_order_path_or_copy_reuses_the_stored_features(demo, tmp_path, backbone, embedded):
    images = _images(demo, 0, 6)
    first = encoder.stored_features(backbone, images)
    assert len(embedded) == 6
    embedded.clear()
    again = encoder.stored_features(backbone, images[::-1][:4])  # another subset, another order
    assert embedded == [] and np.array_equal(again, first[::-1][:4])
    copies = [str(shutil.copy(f, tmp_path / Path(f).name)) for f in images]  # other paths, fresh mtimes
    assert np.array_equal(encoder.stored_features(backbone, copies), first) and embedded == []
    Image.new("RGB", (32, 32), (0, 200, 0)).save(copies[2])
    changed = encoder.stored_features(backbone, copies)
    assert embedded == [copies[2]] and not np.allclose(changed[2], first[2]) and np.array_equal(changed[3], first[3])
    other = create_backbone("tiny_cnn", colour_bins=2)  # another option: other features, its own table
    encoder.stored_features(other, images[:2])
    assert embedded[-2:] == images[:2] and store_usage().entries == 2


def test_an_index_predict_and_a_probe_share_one_embedding_per_image(demo, tmp_path, tiny_cfg, embedded):
    """The commands of one workflow embed each image once: train (probe), then index and predict with its model."""
    from mhtag.index.build import IndexOptions, index_images
    from mhtag.index.predict import predict
    from mhtag.training.fit import fit

    run = fit(tiny_cfg, demo, out=tmp_path / "run")
    trained = len(embedded)
    index_images(demo.parent, tmp_path / "db", model=run.dir, labels=demo, options=IndexOptions(workers=0))
    predict([demo.parent / "images" / "00003.png"], tmp_path / "db")
    assert 0 < trained < 120  # the probe embeds the train and val rows; the index the test rows beside them
    assert len(embedded) == 120 and len(set(embedded)) == 120  # every image once; predict asked the store


CONCURRENT = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers tiny_cnn
import numpy as np
from mhtag.inference.store import FeatureStore
from mhtag.models.backbones import create_backbone
writer = sys.argv[1]
store = FeatureStore(create_backbone("tiny_cnn"))
for i in range(20):
    store.put([f"{{writer}}-{{i}}-{{j}}" for j in range(5)], np.full((5, 32), i, dtype=np.float32))
"""


@pytest.mark.slow
def test_concurrent_writers_lose_no_row(backbone, tmp_path):
    script = CONCURRENT.format(tests=str(TESTS))
    env = {**os.environ, "MHTAG_CACHE": str(cache_dir())}
    procs = [subprocess.Popen([sys.executable, "-c", script, name], env=env) for name in ("a", "b")]
    assert all(p.wait(120) == 0 for p in procs)
    store = FeatureStore(backbone)
    wanted = [f"{w}-{i}-{j}" for w in "ab" for i in range(20) for j in range(5)]
    found = store.get(wanted)
    assert set(found) == set(wanted) and all(found[f"a-{i}-0"][0] == i for i in range(20))


def test_pruning_keeps_the_most_recently_used_backbones(demo, embedded):
    """Least recently used first, strictly: once a table does not fit, an older smaller one goes too."""
    a, b, c = (create_backbone("tiny_cnn", colour_bins=n) for n in (0, 3, 1))  # b's table is larger than c's
    for bb, used in ((a, 1e9), (b, 1.5e9), (c, 1e9)):
        encoder.stored_features(bb, _images(demo, 0, 4))
        table = cache_dir() / FEATURES / f"{FeatureStore(bb).key}.lance"
        os.utime(table / USED, (used, used))  # b used most recently, then a and c long ago
    encoder.stored_features(a, _images(demo, 0, 4))  # ...then a again: a hit marks it used now
    sizes = {t.name: sum(f.stat().st_size for f in t.rglob("*") if f.is_file())
             for t in (cache_dir() / FEATURES).glob("*.lance")}
    keep = sizes[f"{FeatureStore(a).key}.lance"] + sizes[f"{FeatureStore(c).key}.lance"]
    report = prune_store(max_bytes=keep)  # a and c would fit, but b is newer than c
    assert (report.entries, report.removed) == (1, 2)
    embedded.clear()
    for bb in (a, b, c):
        encoder.stored_features(bb, _images(demo, 0, 4))
    assert len(embedded) == 8  # b and c embedded again, a answered


def test_pruning_by_age_and_forgetting_checks_of_vanished_files(demo_copy, backbone):
    images = [str(f) for f in sorted((demo_copy.parent / "images").iterdir())[:3]]
    encoder.stored_features(backbone, images)
    [table] = (cache_dir() / FEATURES).glob("*.lance")
    os.remove(images[0])
    report = prune_store(unused_days=1)
    assert (report.removed, report.entries, report.forgotten_checks) == (0, 1, 1)  # used just now
    os.utime(table / USED, (1e9, 1e9))
    assert prune_store(unused_days=1).removed == 1 and store_usage().entries == 0
    checks = json.loads((cache_dir() / "image_checks.json").read_text())
    assert images[0] not in checks and images[1] in checks


def test_the_cache_command_reports_prunes_and_refuses_a_bad_size(demo, backbone):
    encoder.stored_features(backbone, _images(demo, 0, 4))
    runner = CliRunner()
    shown = json.loads(runner.invoke(cli.app, ["cache", "--json"]).output)
    assert shown["entries"] == 1 and shown["bytes"] > 0 and shown["folder"] == str(cache_dir() / FEATURES)
    bad = runner.invoke(cli.app, ["cache", "--prune-to", "2XB"])
    assert bad.exit_code == 2 and "not a size such as 2GB" in bad.output
    assert store_usage().entries == 1  # nothing removed by the refused command
    cleared = runner.invoke(cli.app, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output and store_usage().entries == 0


@pytest.mark.parametrize(("text", "size"), [("2GB", 2 * 10**9), ("500 mb", 5 * 10**8), ("0", 0), ("1.5K", 1500)])
def test_sizes_are_parsed_in_decimal_units(text, size):
    from mhtag.cli.cache import parse_size

    assert parse_size(text) == size
