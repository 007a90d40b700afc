"""The feature store: each image's backbone features, computed once per backbone and image content and shared by
every command (train's probe and LP-FT's first phase, eval, index, predict, audit, ensembles, distillation).

A row's key is the backbone (its weights, preprocessing and options: `backbone_key`) and the image's bytes (SHA-1),
so any subset, order, path, copy or command reuses it. One LanceDB table per backbone under `MHTAG_CACHE/features/`
(rows: sha1, vector): no file per image, so a million images are one table. Any number of processes may append at
once (Lance commits optimistically and appends never conflict), and rows are never rewritten, so a row's offset is
stable and a lookup is a `take`. `mhtag cache` shows the tables and prunes them by last use, a backbone at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mhtag.core.io import cache_dir
from mhtag.results import CacheReport

if TYPE_CHECKING:  # showing or pruning the store (`mhtag cache`) should not wait for torch to load
    from mhtag.models.backbones import Backbone

_logger = logging.getLogger(__name__)

FEATURES = "features"
USED = "last_used"  # a file in a table's folder whose modification time is the table's last use
LOOKUP_CHUNK = 4096


def backbone_key(backbone: Backbone) -> str:
    """What the features depend on: the backbone's name, preprocessing, options, and every weight and buffer
    (BatchNorm statistics change the features too)."""
    h = hashlib.sha1(json.dumps([backbone.name, backbone.data_config, backbone.options], sort_keys=True).encode())
    for tensor in backbone.state_dict().values():
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _folder() -> Path:
    return cache_dir() / FEATURES


class FeatureStore:
    """The features of one backbone, by image content hash."""

    def __init__(self, backbone: Backbone):
        import lancedb
        import pyarrow as pa

        self.key, self.dim = backbone_key(backbone), backbone.num_features
        self.schema = pa.schema([pa.field("sha1", pa.string()), pa.field("vector", pa.list_(pa.float32(), self.dim))])
        _folder().mkdir(parents=True, exist_ok=True)
        self.table = lancedb.connect(str(_folder())).create_table(self.key, schema=self.schema, exist_ok=True)
        self._offsets: dict[str, int] | None = None

    def _offset_of(self) -> dict[str, int]:
        if self._offsets is None:
            column = self.table.search().select(["sha1"]).limit(None).to_arrow().column("sha1").to_pylist()
            self._offsets = {}
            for offset, sha1 in enumerate(column):
                self._offsets.setdefault(sha1, offset)  # two writers may both have added an image: the first counts
        return self._offsets

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """The stored features of those of `hashes` the store has, by hash."""
        offsets = self._offset_of()
        wanted = sorted({offsets[h] for h in hashes if h in offsets})
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            rows = self.table.take_offsets(wanted[start:start + LOOKUP_CHUNK]).select(["sha1", "vector"]).to_arrow()
            vectors = rows.column("vector").combine_chunks().values.to_numpy().reshape(-1, self.dim)
            found.update(zip(rows.column("sha1").to_pylist(), vectors, strict=True))
        self._touch()
        return found

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Add features (one atomic append); hashes the store already has are skipped."""
        import pyarrow as pa

        offsets = self._offset_of()
        new = [i for i, h in enumerate(hashes) if h not in offsets]
        if not new:
            return
        flat = pa.array(np.ascontiguousarray(vectors[new], dtype=np.float32).ravel())
        self.table.add(pa.table({"sha1": [hashes[i] for i in new],
                                 "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim)}, schema=self.schema))
        self._offsets = None  # other writers may have appended too: read the offsets again when next needed

    def _touch(self) -> None:
        try:
            (_folder() / f"{self.key}.lance" / USED).touch()
        except OSError:  # a read-only store still answers
            pass


class NoStore:
    """Where LanceDB is not installed (the bare image of a GPU machine): every image is embedded, nothing kept."""

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        return {}

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        pass


def feature_store(backbone: Backbone) -> FeatureStore | NoStore:
    """The store of `backbone`'s features; a store that keeps nothing where LanceDB cannot be imported."""
    try:
        import lancedb  # noqa: F401
    except ImportError:
        _logger.info("no feature store: lancedb is not installed, so images are embedded for each command")
        return NoStore()
    return FeatureStore(backbone)


# ---------------------------------------------------------------- what the store holds, and pruning it


def _tables() -> list[tuple[Path, float, int]]:
    """(folder, last use, bytes) of each backbone's table, most recently used first."""
    folder = _folder()
    out = []
    for table in folder.glob("*.lance") if folder.is_dir() else []:
        used = table / USED
        last = used.stat().st_mtime if used.exists() else table.stat().st_mtime
        size = sum(f.stat().st_size for f in table.rglob("*") if f.is_file())
        out.append((table, last, size))
    return sorted(out, key=lambda entry: entry[1], reverse=True)


def store_usage() -> CacheReport:
    """What the store holds: its folder, backbone tables and their bytes, and the oldest and newest last use."""
    tables = _tables()
    return CacheReport(folder=str(_folder()), entries=len(tables), bytes=sum(size for _, _, size in tables),
                       newest_use_days=_days_ago(tables[0][1]) if tables else None,
                       oldest_use_days=_days_ago(tables[-1][1]) if tables else None)


def prune_store(max_bytes: int | None = None, unused_days: float | None = None) -> CacheReport:
    """Delete the least recently used backbone tables until at most `max_bytes` remain, and those unused for more
    than `unused_days`; forget image checks of files that no longer exist. Safe at any time: a deleted table only
    costs its next use the embedding time."""
    from mhtag.data.images import forget_vanished_checks

    kept, removed, freed, full = 0, 0, 0, False
    for table, last, size in _tables():  # newest first: once one does not fit, every older one goes too
        full = full or max_bytes is not None and kept + size > max_bytes
        if full or unused_days is not None and _days_ago(last) > unused_days:
            shutil.rmtree(table, ignore_errors=True)
            removed, freed = removed + 1, freed + size
        else:
            kept += size
    return store_usage().model_copy(update={"removed": removed, "freed_bytes": freed,
                                            "forgotten_checks": forget_vanished_checks()})


def _days_ago(timestamp: float) -> float:
    return round((time.time() - timestamp) / 86400, 2)
