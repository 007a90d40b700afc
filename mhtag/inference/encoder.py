"""The encoder: a trained tagger or a bare backbone that turns image files into L2-normalised embeddings and
(for a tagger) head probabilities, with decoding overlapped with compute."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mhtag.core.progress import progress_bar
from mhtag.core.runtime import auto_workers, autocast, default_device
from mhtag.data.datasets import FileFacts, SafeImageDataset, collate_safe
from mhtag.data.transforms import build_transform
from mhtag.models.backbones import Backbone, create_backbone
from mhtag.models.checkpoint import checkpoint_file, load_checkpoint, tagger_from_checkpoint
from mhtag.models.tagger import Tagger

_logger = logging.getLogger(__name__)
DEFAULT_BACKBONE = "efficientnet_lite0"


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L2-normalised embeddings, head probabilities)."""
        if self.tagger is None:
            return torch.nn.functional.normalize(self.module(x).float(), dim=1), {}
        f = self.tagger.forward_features(x)
        probs = self.tagger.probabilities(self.tagger.forward_heads(f))
        return torch.nn.functional.normalize(f.float(), dim=1), probs

    @torch.no_grad()
    def encode_files(self, files: list[str], batch_size: int = 64, workers: int | None = None,
                     progress: bool = False, description: str = "embedding") -> Iterator[Batch]:
        device = default_device()
        self.module.to(device, memory_format=memory_format(device)).eval()
        for out, ok, facts, bad in embed_batches(self.forward, files, self.data_config, batch_size, device,
                                                 workers, progress, description):
            if out is None:
                yield Batch(np.zeros((0, self.dim), np.float32), {}, ok, facts, bad)
                continue
            feats, probs = out
            yield Batch(feats.cpu().numpy(), {k: v.float().cpu().numpy() for k, v in probs.items()}, ok, facts,
                        bad)

    def encode_images(self, images: list) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Embeddings and probabilities of decoded PIL images (uploads: nothing touches the file system)."""
        device = default_device()
        self.module.to(device).eval()
        transform = build_transform(self.data_config)
        x = torch.stack([transform(img) for img in images]).to(device)
        with torch.no_grad(), autocast(device):
            feats, probs = self.forward(x)
        return feats.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in probs.items()}


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_encoder(model: str | Path | None = None, backbone: str = DEFAULT_BACKBONE) -> Encoder:
    """A trained run (folder or checkpoint) or, without one, the pretrained `backbone` alone."""
    if model is None:
        bb = create_backbone(backbone)
        return Encoder(bb.eval(), f"backbone:{bb.name}", None, bb.name, bb.data_config)
    path = checkpoint_file(model)
    tagger = tagger_from_checkpoint(load_checkpoint(path))
    return Encoder(tagger, f"model:{_file_digest(path)}", str(path.resolve()), tagger.backbone.name,
                   tagger.backbone.data_config)


# ---------------------------------------------------------------- embedding a backbone


@dataclass
class Embedded:
    vectors: np.ndarray  # (n_ok, D) float32, rows in the order of `ok`
    ok: list[int]  # indices into the input files
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)


def embed_files(backbone: Backbone, files: list[str], data_config: dict[str, Any], batch_size: int = 64,
                device: torch.device | None = None, workers: int | None = None, progress: bool = False) -> Embedded:
    """Raw (un-normalised) backbone features of `files`: what heads train on."""
    device = device or default_device()
    backbone = backbone.to(device).eval()
    vectors, ok, failed = [], [], []
    for out, idx, _, bad in embed_batches(backbone, files, data_config, batch_size, device, workers, progress):
        if out is not None:
            vectors.append(out.float().cpu().numpy())
            ok += idx
        failed += bad
    dim = backbone.num_features
    return Embedded(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), ok, failed)
