"""The embedding cache: keyed on file contents, marked on use, pruned least recently used first."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import mhtag.inference.cache as cache
import mhtag.inference.encoder as encoder
from mhtag import cli
from mhtag.models.backbones import create_backbone


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MHTAG_CACHE", str(tmp_path / "cache"))  # empty, not the session's shared one


@pytest.fixture
def backbone():
    return create_backbone("tiny_cnn")


@pytest.fixture
def embedded(monkeypatch):
    """The file lists that were really embedded (not answered from the cache)."""
    calls = []
    real = encoder.embed_files  # the cache imports it when it must embed
    monkeypatch.setattr(encoder, "embed_files", lambda b, fs, *a, **k: calls.append(fs) or real(b, fs, *a, **k))
    return calls


def _images(demo: Path, start: int, n: int) -> list[str]:
    return [str(f) for f in sorted((demo.parent / "images").iterdir())[start:start + n]]


def _embed(backbone, files: list[str]) -> np.ndarray:
    return cache.cached_embeddings(backbone, files, backbone.data_config)


def test_the_cache_follows_file_contents_not_paths_or_times(demo, tmp_path, backbone, embedded):
    """A catalogue copied elsewhere (new paths and modification times, same bytes) is answered from the cache;
    a file rewritten with other pixels is embedded again."""
    images = _images(demo, 0, 6)
    first = _embed(backbone, images)
    copies = [str(shutil.copy(f, tmp_path / Path(f).name)) for f in images]  # copy, not copy2: fresh mtimes
    embedded.clear()
    assert np.array_equal(_embed(backbone, copies), first) and embedded == []
    Image.new("RGB", (32, 32), (0, 200, 0)).save(copies[2])
    changed = _embed(backbone, copies)
    assert len(embedded) == 1 and not np.allclose(changed[2], first[2]) and np.allclose(changed[3], first[3])


def test_pruning_keeps_the_most_recently_used_entries(demo, backbone, embedded):
    """Least recently used first, strictly: once an entry does not fit, an older smaller one goes too."""
    a, b, c = _images(demo, 0, 4), _images(demo, 4, 8), _images(demo, 12, 2)
    sizes = {}
    for files, used in ((a, 1e9), (b, 1.5e9), (c, 1e9)):
        _embed(backbone, files)
        [path] = set((cache.cache_dir() / cache.FEATURES).glob("*.npy")) - {p for p, _ in sizes.values()}
        os.utime(path, (used, used))  # b used most recently, then a and c long ago
        sizes[len(files)] = (path, path.stat().st_size)
    _embed(backbone, a)  # ...then a again: a hit marks it used now
    assert cache.cache_usage().entries == 3
    report = cache.prune_cache(max_bytes=sizes[4][1] + sizes[2][1])  # a and c would fit, but b is newer than c
    assert (report.entries, report.removed, report.freed_bytes) == (1, 2, sizes[8][1] + sizes[2][1])
    embedded.clear()
    for files in (a, b, c):
        _embed(backbone, files)
    assert embedded == [b, c]


def test_pruning_by_age_and_forgetting_checks_of_vanished_files(demo_copy, backbone):
    images = [str(f) for f in sorted((demo_copy.parent / "images").iterdir())[:3]]
    _embed(backbone, images)
    [entry] = (cache.cache_dir() / cache.FEATURES).glob("*.npy")
    os.remove(images[0])
    report = cache.prune_cache(unused_days=1)
    assert (report.removed, report.entries, report.forgotten_checks) == (0, 1, 1)  # used just now
    os.utime(entry, (1e9, 1e9))
    assert cache.prune_cache(unused_days=1).removed == 1 and cache.cache_usage().entries == 0
    checks = json.loads((cache.cache_dir() / "image_checks.json").read_text())
    assert images[0] not in checks and images[1] in checks


def test_the_cache_command_reports_prunes_and_refuses_a_bad_size(demo, backbone):
    _embed(backbone, _images(demo, 0, 4))
    runner = CliRunner()
    shown = json.loads(runner.invoke(cli.app, ["cache", "--json"]).output)
    assert shown["entries"] == 1 and shown["bytes"] > 0 and shown["folder"] == str(cache.cache_dir())
    bad = runner.invoke(cli.app, ["cache", "--prune-to", "2XB"])
    assert bad.exit_code == 2 and "not a size such as 2GB" in bad.output
    assert cache.cache_usage().entries == 1  # nothing removed by the refused command
    cleared = runner.invoke(cli.app, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output and cache.cache_usage().entries == 0


@pytest.mark.parametrize(("text", "size"), [("2GB", 2 * 10**9), ("500 mb", 5 * 10**8), ("0", 0), ("1.5K", 1500)])
def test_sizes_are_parsed_in_decimal_units(text, size):
    from mhtag.cli.cache import parse_size

    assert parse_size(text) == size
