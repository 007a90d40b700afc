"""Evaluation of a trained run on one split of a labels CSV."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhtag.core.errors import MhtagError
from mhtag.core.runtime import autocast, default_device
from mhtag.data.labels import FILE, Skipped, drop_unreadable, read_labels
from mhtag.inference.encoder import stored_features
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint, with_options
from mhtag.models.tagger import Tagger
from mhtag.training.metrics import head_metrics, reliability_curves

_logger = logging.getLogger(__name__)


@torch.no_grad()
def tagger_probabilities(model: Tagger, files: list[str], batch_size: int = 128, workers: int | None = None,
                         progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Head probabilities for readable `files`, calibrated and as the heads gave them before calibration;
    embeddings of the (frozen or fine-tuned) backbone are cached."""
    device = default_device()
    feats = stored_features(model.backbone, files, batch_size=batch_size, device=device, workers=workers,
                            progress=progress)
    model.to(device).eval()
    with autocast(device):
        logits = model.forward_heads(torch.from_numpy(feats).to(device))

    def numpy(probs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in probs.items()}

    return numpy(model.probabilities(logits)), numpy(model.probabilities(logits, calibrated=False))


@dataclass
class SplitRows:
    """One split's readable rows, encoded for a model."""

    files: list[str]
    targets: dict[str, np.ndarray]
    unknown: dict[str, int]  # per head: labels never seen in training (left out of its metrics)
    skipped: list[Skipped]


def split_rows(model: Tagger, config: dict[str, Any], labels: str | Path, images: str | Path | None,
               split: str) -> SplitRows:
    """The rows of `split` ("all": every row) of a labels CSV read as `model` was trained (`config`)."""
    multilabel = [a.name for a in model.schema.attributes if a.multi]
    table = drop_unreadable(read_labels(labels, images, multilabel, list(config["ignore"])))
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
    return SplitRows(frame[FILE].tolist(), targets, unknown, table.skipped)


def evaluate(run: str | Path, labels: str | Path, images: str | Path | None = None, split: str = "test",
             batch_size: int = 128, progress: bool = False, tta_flip: bool | None = None) -> dict[str, Any]:
    """`{"heads": {attr: metrics}, "n": rows, "skipped": [...], "unknown_labels": {attr: count},
    "reliability": {attr: {"before": curve, "after": curve}}}`: metrics of the calibrated model, each head's
    `ece_uncalibrated` beside its `ece`, `ece_floor` / `ece_floor_p95` (the mean and 95th percentile of the ECE a
    perfectly calibrated model with the same confidences scores on this many rows), and reliability curves before
    and after calibration.
    `tta_flip` overrides the model's saved test-time flip (an ablation; None keeps what was saved)."""
    state = load_checkpoint(run)
    model = tagger_from_checkpoint(state if tta_flip is None else with_options(state, tta_flip=tta_flip))
    rows = split_rows(model, state["config"], labels, images, split)
    targets = rows.targets
    probs, raw = tagger_probabilities(model, rows.files, batch_size, progress=progress)
    thresholds = {k: np.asarray(v) for k, v in model.thresholds_.items()}
    heads = head_metrics(model.schema, probs, targets, thresholds)
    reliability = reliability_curves(model.schema, targets, before=raw, after=probs)
    for name, curves in reliability.items():
        heads[name]["ece_uncalibrated"] = curves["before"]["ece"]
        heads[name]["ece_floor"] = curves["after"]["ece_floor"]
        heads[name]["ece_floor_p95"] = curves["after"]["ece_floor_p95"]
    return {
        "heads": heads,
        "reliability": reliability,
        "n": len(rows.files),
        "split": split,
        "skipped": [str(s) for s in rows.skipped],
        "unknown_labels": rows.unknown,
    }
