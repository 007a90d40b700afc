"""Evaluation of a trained run on one split of a labels CSV."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhtag.core.errors import MhtagError
from mhtag.core.runtime import autocast, default_device
from mhtag.data.labels import FILE, drop_unreadable, read_labels
from mhtag.inference.encoder import cached_embeddings
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.models.tagger import Tagger
from mhtag.training.metrics import head_metrics

_logger = logging.getLogger(__name__)


@torch.no_grad()
def tagger_probabilities(model: Tagger, files: list[str], batch_size: int = 128, workers: int | None = None,
                         progress: bool = False) -> dict[str, np.ndarray]:
    """Head probabilities for readable `files`; embeddings of the (frozen or fine-tuned) backbone are cached."""
    device = default_device()
    feats = cached_embeddings(model.backbone, files, model.backbone.data_config, batch_size, device, workers,
                              progress)
    model.to(device).eval()
    with autocast(device):
        logits = model.forward_heads(torch.from_numpy(feats).to(device))
    return {k: v.cpu().numpy() for k, v in model.probabilities(logits).items()}


def evaluate(run: str | Path, labels: str | Path, images: str | Path | None = None, split: str = "test",
             batch_size: int = 128, progress: bool = False) -> dict[str, Any]:
    """`{"heads": {attr: metrics}, "n": rows, "skipped": [...], "unknown_labels": {attr: count}}`."""
    state = load_checkpoint(run)
    model = tagger_from_checkpoint(state)
    cfg = state["config"]
    multilabel = [a.name for a in model.schema.attributes if a.multi]
    table = drop_unreadable(read_labels(labels, images, multilabel, [c for c in cfg["ignore"]]))
    frame = table.split(split) if split != "all" else table.frame
    if len(frame) == 0:
        raise MhtagError(f"{labels}: no usable rows in split {split!r}")
    missing = [a for a in model.schema.names if a not in frame.columns]
    if missing:
        raise MhtagError(f"{labels}: no column for head(s) {', '.join(missing)} of this model")
    targets, unknown = model.schema.encode(frame)
    for name, count in unknown.items():
        if count:
            _logger.warning("%s: %d label(s) never seen in training; left out of its metrics", name, count)
    probs = tagger_probabilities(model, frame[FILE].tolist(), batch_size, progress=progress)
    thresholds = {k: np.asarray(v) for k, v in model.thresholds_.items()}
    return {
        "heads": head_metrics(model.schema, probs, targets, thresholds),
        "n": len(frame),
        "split": split,
        "skipped": [str(s) for s in table.skipped],
        "unknown_labels": unknown,
    }
