"""The encoder: a trained tagger or a bare backbone that turns image files into L2-normalised embeddings and
(for a tagger) head probabilities, with decoding overlapped with compute."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mhtag.core.config import DEFAULT_BACKBONE
from mhtag.core.errors import MhtagError
from mhtag.core.progress import progress_bar
from mhtag.core.runtime import auto_workers, autocast, default_device, torch_setup
from mhtag.data.datasets import SafeImageDataset, collate_safe
from mhtag.data.images import FileFacts, check_image_files, file_hash, read_facts
from mhtag.data.transforms import build_transform
from mhtag.inference.store import backbone_key, feature_store
from mhtag.models.backbones import Backbone, create_backbone
from mhtag.models.checkpoint import checkpoint_file, load_checkpoint, tagger_from_checkpoint
from mhtag.models.tagger import Tagger

_logger = logging.getLogger(__name__)


def loader_kwargs(device: torch.device, workers: int | None) -> dict[str, Any]:
    workers = auto_workers(workers)
    kw: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        kw["prefetch_factor"] = 4
        # forked workers would inherit LanceDB's async runtime (it warns of deadlocks); forkserver starts clean
        kw["multiprocessing_context"] = "forkserver"
    return kw


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on a GPU (its convolutions run faster in NHWC with bf16), the default layout elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@dataclass
class Batch:
    """One batch of encoded files: rows in the order of `ok` (indices into the input files)."""

    embeddings: np.ndarray  # (n_ok, D) float32, L2-normalised for an Encoder, raw for a bare forward
    probs: dict[str, np.ndarray]  # attribute -> (n_ok, outputs)
    ok: list[int]
    facts: list[FileFacts]
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


@torch.no_grad()
def embed_batches(forward, files: list[str], data_config: dict[str, Any], batch_size: int = 64,
                  device: torch.device | None = None, workers: int | None = None, progress: bool = False,
                  description: str = "embedding") -> Iterator[tuple[Any, list[int], list[FileFacts], list]]:
    """Yield (forward's output or None, ok indices, their FileFacts, failures) per batch of `files`."""
    device = device or default_device()
    ds = SafeImageDataset(files, build_transform(data_config))
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate_safe, **loader_kwargs(device, workers))
    layout = memory_format(device)
    with progress_bar(description, len(files), progress) as advance:
        for xs, ok, facts, bad in loader:
            out = None
            if xs is not None:
                with autocast(device):
                    out = forward(xs.to(device, non_blocking=True, memory_format=layout))
            yield out, ok, facts, bad
            advance(len(ok) + len(bad))


@dataclass
class Encoder:
    """What turns an image into a row: a trained tagger (embedding + heads) or a bare backbone."""

    module: Tagger | Backbone
    model_id: str
    model_path: str | None
    backbone: str
    data_config: dict[str, Any]

    @property
    def tagger(self) -> Tagger | None:
        return self.module if isinstance(self.module, Tagger) else None

    @property
    def dim(self) -> int:
        return self.module.num_features

    @cached_property
    def space(self) -> str:
        """What the embeddings mean: the backbone's identity. Two models with one backbone (a probe retrained on
        corrected labels) share it, and an index keeps its vectors across them."""
        return backbone_key(self.backbone_module)

    @property
    def backbone_module(self) -> Backbone:
        return self.tagger.backbone if self.tagger is not None else self.module

    def answer(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L2-normalised embeddings, head probabilities) of raw backbone features."""
        probs = self.tagger.probabilities(self.tagger.forward_heads(features)) if self.tagger is not None else {}
        return torch.nn.functional.normalize(features.float(), dim=1), probs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L2-normalised embeddings, head probabilities) of a batch of images."""
        return self.answer(self.backbone_module(x))

    @torch.no_grad()
    def encode_files(self, files: list[str], batch_size: int = 64, workers: int | None = None,
                     progress: bool = False, description: str = "embedding") -> Iterator[Batch]:
        """Embeddings and head probabilities of `files`, a batch at a time (in any order: `Batch.ok` says which
        files). A file's features come from the feature store where it has the file's content, else from the
        backbone, and are then stored: an image is embedded once per backbone, whatever the command."""
        device = default_device()
        self.module.to(device, memory_format=memory_format(device)).eval()
        facts, failed = read_facts(files, progress)
        if failed:
            yield self._batch(None, [], [], failed)
        store = feature_store(self.backbone_module)
        found = store.get([f.sha1 for f in facts.values()])
        hits = [i for i, f in facts.items() if f.sha1 in found]
        for start in range(0, len(hits), batch_size):
            chunk = hits[start:start + batch_size]
            features = torch.from_numpy(np.stack([found[facts[i].sha1] for i in chunk]))
            yield self._batch(features, chunk, [facts[i] for i in chunk], [])
        misses = [i for i in facts if facts[i].sha1 not in found]
        for out, ok, got, bad in embed_batches(self.backbone_module, [files[i] for i in misses], self.data_config,
                                               batch_size, device, workers, progress, description):
            if out is not None:
                store.put([f.sha1 for f in got], out.float().cpu().numpy())
            yield self._batch(out, [misses[i] for i in ok], got, [(misses[i], reason) for i, reason in bad])

    def _batch(self, features: torch.Tensor | None, ok: list[int], facts: list[FileFacts],
               failed: list[tuple[int, str]]) -> Batch:
        if features is None or not ok:
            return Batch(np.zeros((0, self.dim), np.float32), {}, ok, facts, failed)
        embeddings, probs = self.answer(features.to(next(self.module.parameters()).device))
        return Batch(embeddings.cpu().numpy(), {k: v.float().cpu().numpy() for k, v in probs.items()}, ok, facts,
                     failed)

    def encode_images(self, images: list) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Embeddings and probabilities of decoded PIL images (uploads: nothing touches the file system)."""
        device = default_device()
        self.module.to(device).eval()
        transform = build_transform(self.data_config)
        x = torch.stack([transform(img) for img in images]).to(device)
        with torch.no_grad(), autocast(device):
            feats, probs = self.forward(x)
        return feats.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in probs.items()}


def load_encoder(model: str | Path | None = None, backbone: str = DEFAULT_BACKBONE) -> Encoder:
    """A trained run (folder or checkpoint) or, without one, the pretrained `backbone` alone."""
    torch_setup()
    if model is None:
        bb = create_backbone(backbone)
        return Encoder(bb.eval(), f"backbone:{bb.name}", None, bb.name, bb.data_config)
    path = checkpoint_file(model)
    tagger = tagger_from_checkpoint(load_checkpoint(path))
    return Encoder(tagger, f"model:{file_hash(path)[:16]}", str(path.resolve()), tagger.backbone.name,
                   tagger.backbone.data_config)


# ---------------------------------------------------------------- embedding a backbone


@dataclass
class Embedded:
    vectors: np.ndarray  # (n_ok, D) float32, rows in the order of `ok`
    ok: list[int]  # indices into the input files
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


def embed_files(backbone: Backbone, files: list[str], batch_size: int = 64, device: torch.device | None = None,
                workers: int | None = None, progress: bool = False) -> Embedded:
    """Raw (un-normalised) backbone features of `files`, computed (`store.stored_features` reuses them)."""
    device = device or default_device()
    backbone = backbone.to(device).eval()
    vectors, ok, failed = [], [], []
    for out, idx, _, bad in embed_batches(backbone, files, backbone.data_config, batch_size, device, workers,
                                          progress):
        if out is not None:
            vectors.append(out.float().cpu().numpy())
            ok += idx
        failed += bad
    dim = backbone.num_features
    return Embedded(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), ok, failed)


def stored_features(backbone: Backbone, files: list[str], hashes: list[str] | None = None, batch_size: int = 64,
                    device: torch.device | None = None, workers: int | None = None,
                    progress: bool = False) -> np.ndarray:
    """Raw backbone features of `files` (all must be usable images), in order: from the store where it has them,
    from the backbone where it does not (and then stored). `hashes`: the files' content hashes where the caller
    knows them (an index, a check of the files), else they are computed from the files."""
    if hashes is None:
        checks = check_image_files(files)
        bad = next((i for i, c in enumerate(checks) if c.error), None)
        if bad is not None:
            raise MhtagError(f"{files[bad]}: {checks[bad].error}")
        hashes = [c.sha1 for c in checks]
    store = feature_store(backbone)
    found = store.get(hashes)
    todo = [i for i, h in enumerate(hashes) if h not in found]
    if todo:
        _logger.debug("embedding %d of %d images (the store has the rest)", len(todo), len(files))
        result = embed_files(backbone, [files[i] for i in todo], batch_size, device, workers, progress)
        if result.failed:
            i, reason = result.failed[0]
            raise MhtagError(f"{files[todo[i]]}: {reason}")
        store.put([hashes[todo[i]] for i in result.ok], result.vectors)
        found.update({hashes[todo[i]]: v for i, v in zip(result.ok, result.vectors, strict=True)})
    else:
        _logger.debug("reusing stored features of %d images", len(files))
    return np.stack([found[h] for h in hashes]) if hashes else np.zeros((0, backbone.num_features), np.float32)
