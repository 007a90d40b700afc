"""The on-disk embedding cache (`MHTAG_CACHE`, else ~/.cache/mhtag): one `.npy` of backbone features per backbone
weights, preprocessing and file contents, reused by training, eval, ensembles and audits; what it holds, and
pruning it by last use."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_path, cache_dir
from mhtag.data.images import check_image_files, forget_vanished_checks
from mhtag.results import CacheReport

if TYPE_CHECKING:  # showing or pruning the cache (`mhtag cache`) should not wait for torch to load
    import torch

    from mhtag.models.backbones import Backbone

_logger = logging.getLogger(__name__)
FEATURES = "features"


def _cache_key(backbone: Backbone, files: list[str], data_config: dict[str, Any]) -> str:
    """Backbone weights, preprocessing and the files' contents, in order: a catalogue copied, moved or
    re-mounted (new paths or modification times, same bytes) is answered from the cache; a changed file is not."""
    h = hashlib.sha1(json.dumps([backbone.name, data_config, backbone.options], sort_keys=True).encode())
    for p in backbone.state_dict().values():  # buffers too: BatchNorm statistics change the features
        h.update(p.detach().cpu().numpy().tobytes())
    for f, check in zip(files, check_image_files(files), strict=True):
        h.update(f"{check.sha1 or 'unusable:' + f}\n".encode())  # an unusable file fails the embedding anyway
    return h.hexdigest()[:20]


def cached_embeddings(backbone: Backbone, files: list[str], data_config: dict[str, Any], batch_size: int = 64,
                      device: torch.device | None = None, workers: int | None = None,
                      progress: bool = False) -> np.ndarray:
    """Embeddings of `files` (all must be readable), reused from disk when backbone, contents and size match."""
    from mhtag.inference.encoder import embed_files

    path = cache_dir() / FEATURES / f"{_cache_key(backbone, files, data_config)}.npy"
    if path.is_file():
        _logger.info("reusing cached embeddings %s", path)
        _mark_used(path)
        return np.load(path)
    result = embed_files(backbone, files, data_config, batch_size, device, workers, progress)
    if result.failed:
        i, reason = result.failed[0]
        raise MhtagError(f"{files[i]}: {reason}")
    with atomic_path(path) as tmp:
        np.save(tmp, result.vectors)
    return result.vectors


def _mark_used(path: Path) -> None:
    """Last use is the file's modification time (access times are often not kept), which pruning goes by."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache still answers
        pass


def _entries() -> list[tuple[Path, os.stat_result]]:
    """The embedding files, most recently used first."""
    folder = cache_dir() / FEATURES
    found = [(p, p.stat()) for p in folder.glob("*.npy")] if folder.is_dir() else []
    return sorted(found, key=lambda entry: entry[1].st_mtime, reverse=True)


def cache_usage() -> CacheReport:
    """What the cache holds: its folder, embedding files and their bytes, and the oldest and newest last use."""
    stats = [st for _, st in _entries()]
    return CacheReport(folder=str(cache_dir()), entries=len(stats), bytes=sum(st.st_size for st in stats),
                       newest_use_days=_days_ago(stats[0].st_mtime) if stats else None,
                       oldest_use_days=_days_ago(stats[-1].st_mtime) if stats else None)


def prune_cache(max_bytes: int | None = None, unused_days: float | None = None) -> CacheReport:
    """Delete the least recently used embedding files until at most `max_bytes` remain, and those unused for
    more than `unused_days`; forget image checks of files that no longer exist. Safe at any time: a deleted
    entry only costs its next use the embedding time."""
    kept_bytes, removed, freed, full = 0, 0, 0, False
    for path, st in _entries():  # newest first: once one does not fit, every older one goes too
        full = full or max_bytes is not None and kept_bytes + st.st_size > max_bytes
        if full or unused_days is not None and _days_ago(st.st_mtime) > unused_days:
            path.unlink(missing_ok=True)
            removed, freed = removed + 1, freed + st.st_size
        else:
            kept_bytes += st.st_size
    return cache_usage().model_copy(update={"removed": removed, "freed_bytes": freed,
                                            "forgotten_checks": forget_vanished_checks()})


def _days_ago(timestamp: float) -> float:
    return round((time.time() - timestamp) / 86400, 2)
