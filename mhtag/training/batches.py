"""What a training run feeds on: the labelled rows split into train/val, and mini-batches of images (fine-tune)
or of cached frozen embeddings (probe)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from mhtag.core.config import TrainConfig
from mhtag.core.errors import MhtagError
from mhtag.core.runtime import DistInfo
from mhtag.data.datasets import AugmentedDataset, EpochSampler, ImageDataset
from mhtag.data.labels import FILE, SHA1, LabelTable, drop_unreadable, read_labels
from mhtag.data.transforms import build_transform, forbidden_augmentations
from mhtag.inference.encoder import loader_kwargs, stored_features
from mhtag.models.tagger import Tagger

_logger = logging.getLogger(__name__)
PROBE_BATCH = 512  # with probe_lr 6e-3: equal val accuracy to 256 and 3e-3 on fashion12k, fewer steps


def prepare_data(cfg: TrainConfig, labels: str | Path | LabelTable, images: str | Path | None,
                 progress: bool = False) -> tuple[LabelTable, Any, Any]:
    """The usable rows of a labels CSV (every image checked once), or of a table already checked (a catalogue's:
    `catalogue.retrain.catalogue_table`), split into train and val rows."""
    if isinstance(labels, LabelTable):
        table = labels
    else:
        table = drop_unreadable(read_labels(labels, images, cfg.multilabel, cfg.ignore), progress=progress)
    for s in table.skipped[:20]:
        _logger.warning("skipped %s", s)
    if table.skipped:
        _logger.warning("skipped %d row(s) of %s", len(table.skipped), labels)
    train, val = table.split("train"), table.split("val")
    if len(train) == 0:
        raise MhtagError(f"{labels}: no usable training rows")
    if len(val) == 0:  # no validation split given: hold out every 10th training row
        val, train = train.iloc[::10].reset_index(drop=True), train.drop(index=train.index[::10]).reset_index(drop=True)
        _logger.warning("no 'val' rows: holding out %d training rows for validation", len(val))
    return table, train, val


class TensorBatches:
    """Mini-batches of in-memory feature rows (the probe's data): no per-sample Dataset/DataLoader overhead.
    Shuffled by a generator the loop re-seeds each epoch, so a resumed run sees the same order."""

    def __init__(self, x: np.ndarray, targets: dict[str, np.ndarray], batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None):
        self.x = torch.from_numpy(x)
        self.y = {k: torch.from_numpy(v) for k, v in targets.items()}
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        self.drop_last = shuffle and len(self.x) > batch_size

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.x[idx], {k: v[idx] for k, v in self.y.items()}


def probe_loaders(model: Tagger, cfg: TrainConfig, train_df, val_df, y_train, y_val, device: torch.device,
                  generator: torch.Generator, progress: bool) -> tuple[TensorBatches, TensorBatches]:
    """Mini-batches of the frozen backbone's embeddings of every row, computed once (cached on disk)."""
    def embed(df) -> np.ndarray:
        return stored_features(model.backbone, df[FILE].tolist(), df[SHA1].tolist(), cfg.batch_size, device,
                               cfg.num_workers, progress=progress)

    return (TensorBatches(embed(train_df), y_train, PROBE_BATCH, True, generator),
            TensorBatches(embed(val_df), y_val, PROBE_BATCH * 2, False))


def image_loaders(model: Tagger, cfg: TrainConfig, train_df, val_df, y_train, y_val, device: torch.device,
                  dist: DistInfo, generator: torch.Generator) -> tuple[DataLoader, DataLoader]:
    """Decoded, augmented training images (each draw seeded by seed, epoch and image) and plain validation ones."""
    data_config = model.backbone.data_config
    forbid = forbidden_augmentations(model.schema.names, cfg.aug_forbid)
    train_ds = AugmentedDataset(train_df[FILE].tolist(), build_transform(data_config, train=cfg.augment,
                                                                       forbid=forbid), y_train, seed=cfg.seed)
    val_ds = ImageDataset(val_df[FILE].tolist(), build_transform(data_config), y_val)
    kw = loader_kwargs(device, cfg.num_workers)
    # decoding processes live as long as the run: started anew each epoch, they cost seconds an epoch on a GPU
    kw["persistent_workers"] = kw["num_workers"] > 0
    # each iterator draws a seed for its processes; from a generator of its own, not the process's (which dropout
    # uses), since persistent processes draw it once and fresh ones each epoch. Augmentation does not depend on it.
    kw["generator"] = torch.Generator().manual_seed(cfg.seed)
    order = DistributedSampler(train_ds, seed=cfg.seed) if dist.enabled else RandomSampler(train_ds,
                                                                                            generator=generator)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=EpochSampler(order),
                              drop_last=len(train_ds) > cfg.batch_size, **kw)
    return train_loader, DataLoader(val_ds, batch_size=cfg.batch_size * 2, **kw)
