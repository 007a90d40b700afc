"""Embeddings: run a backbone over image files, with decoding overlapped with compute, and cache the result."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mhtag.backbones import Backbone
from mhtag.data import SafeImageDataset, build_transform, collate_safe
from mhtag.errors import MhtagError
from mhtag.runtime import auto_workers, autocast, default_device, progress_bar

_logger = logging.getLogger(__name__)


def resolve_data_config(backbone: Backbone, image_size: list[int] | None = None) -> dict[str, Any]:
    """The backbone's own preprocessing, with the input size replaced when the config sets one."""
    cfg = dict(backbone.data_config)
    if image_size is not None:
        cfg["input_size"] = list(image_size)
    return cfg


@dataclass
class Embedded:
    vectors: np.ndarray  # (n_ok, D) float32, rows in the order of `ok`
    ok: list[int]  # indices into the input files
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


def loader_kwargs(device: torch.device, workers: int | None) -> dict[str, Any]:
    workers = auto_workers(workers)
    kw: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        kw["prefetch_factor"] = 4
        # forked workers would inherit LanceDB's async runtime (it warns of deadlocks); forkserver starts clean
        kw["multiprocessing_context"] = "forkserver"
    return kw


@torch.no_grad()
def embed_batches(forward, files: list[str], data_config: dict[str, Any], batch_size: int = 64,
                  device: torch.device | None = None, workers: int | None = None, progress: bool = False,
                  description: str = "embedding"):
    """Yield (outputs, ok_indices, failures) per batch of `files`; unreadable files are reported, not fatal."""
    device = device or default_device()
    ds = SafeImageDataset(files, build_transform(data_config))
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate_safe, **loader_kwargs(device, workers))
    with progress_bar(description, len(files), progress) as advance:
        for xs, ok, bad in loader:
            out = None
            if xs is not None:
                with autocast(device):
                    out = forward(xs.to(device, non_blocking=True))
            yield out, ok, bad
            advance(len(ok) + len(bad))


def embed_files(backbone: Backbone, files: list[str], data_config: dict[str, Any], batch_size: int = 64,
                device: torch.device | None = None, workers: int | None = None, progress: bool = False) -> Embedded:
    device = device or default_device()
    backbone = backbone.to(device).eval()
    vectors, ok, failed = [], [], []
    for out, idx, bad in embed_batches(backbone, files, data_config, batch_size, device, workers, progress):
        if out is not None:
            vectors.append(out.float().cpu().numpy())
            ok += idx
        failed += bad
    dim = backbone.num_features
    return Embedded(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), ok, failed)


def _cache_key(backbone: Backbone, files: list[str], data_config: dict[str, Any]) -> str:
    h = hashlib.sha1(json.dumps([backbone.name, data_config], sort_keys=True).encode())
    for p in backbone.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cache_dir() -> Path:
    return Path(os.environ.get("MHTAG_CACHE", Path.home() / ".cache" / "mhtag"))


def cached_embeddings(backbone: Backbone, files: list[str], data_config: dict[str, Any], batch_size: int = 64,
                      device: torch.device | None = None, workers: int | None = None,
                      progress: bool = False) -> np.ndarray:
    """Embeddings of `files` (all must be readable), reused from disk when backbone, files and size match."""
    path = cache_dir() / "features" / f"{_cache_key(backbone, files, data_config)}.npy"
    if path.is_file():
        _logger.info("reusing cached embeddings %s", path)
        return np.load(path)
    result = embed_files(backbone, files, data_config, batch_size, device, workers, progress)
    if result.failed:
        i, reason = result.failed[0]
        raise MhtagError(f"{files[i]}: {reason}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, result.vectors)
    os.replace(tmp, path)
    return result.vectors
