"""A text tower learned from a catalogue's own captions (`mhtag train --captions COL`): product titles are
captions, as in FashionCLIP. Contrastive (InfoNCE, both directions, learned temperature), with the image side
locked to the backbone's normalised features (read from the feature store: no image is decoded twice), so the
tower maps words into the space the index stores. The epoch whose val captions retrieve their own images best
(recall@10) is kept; test captions are never seen."""

from __future__ import annotations

import copy
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mhtag.core.errors import MhtagError
from mhtag.core.progress import progress_bar
from mhtag.data.labels import FILE, SHA1, LabelTable
from mhtag.inference.encoder import stored_features
from mhtag.models.backbones import Backbone
from mhtag.models.text import LearnedTextTower, save_text_tower

_logger = logging.getLogger(__name__)
WORD = re.compile(r"\w[\w'-]*")


@dataclass
class CaptionOptions:
    """How the text tower learns. Defaults chosen on fashion12k's val captions (docs/words.md)."""

    column: str
    epochs: int = 15
    lr: float = 5e-4
    batch_size: int = 256
    width: int = 256
    layers: int = 2
    heads: int = 4
    context_length: int = 32  # tokens; product titles are short, longer captions are cut
    min_count: int = 20  # a phrase mined for `describe` occurs in at least this many captions
    seed: int = 0


@dataclass
class TextReport:
    folder: str
    captions: int
    val_recall_at_10: float | None
    epochs_run: int
    kept_epoch: int
    phrases: int
    seconds: float


def mine_phrases(captions: list[str], min_count: int = 20, max_words: int = 2) -> list[str]:
    """Words and short n-grams (lower case) that occur in at least `min_count` captions, most frequent first:
    the terms `describe` ranks (rare words, such as most brand names, fall below the count)."""
    counts: Counter = Counter()
    for caption in captions:
        words = WORD.findall(str(caption).lower())
        grams = {" ".join(words[i:i + n]) for n in range(1, max_words + 1) for i in range(len(words) - n + 1)}
        counts.update(grams)
    return [p for p, c in counts.most_common() if c >= min_count]


def image_vectors(table: LabelTable, backbone: Backbone) -> np.ndarray:
    """The rows' normalised backbone features: what the index stores for them."""
    x = stored_features(backbone, table.frame[FILE].tolist(),
                        table.frame[SHA1].tolist() if SHA1 in table.frame else None)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall_at(tower: LearnedTextTower, captions: list[str], images: np.ndarray, k: int = 10) -> float:
    """Share of captions whose own image is among the `k` images nearest to them."""
    if not len(captions):
        return float("nan")
    t = tower.encode(captions).numpy()
    sims = t @ images.T
    own = sims[np.arange(len(t)), np.arange(len(t))]
    rank = (sims > own[:, None]).sum(1)
    return float((rank < k).mean())


def fit_text_tower(table: LabelTable, backbone: Backbone, out: str | Path, options: CaptionOptions,
                   progress: bool = False) -> TextReport:
    """Learn a text tower from `table`'s caption column (train rows; val rows choose the epoch), save it in `out`
    beside the model, with the phrases mined from the captions."""
    t0 = time.monotonic()
    column = options.column
    if column not in table.frame.columns:
        raise MhtagError(f"--captions {column!r}: the labels have no such column; free-text columns: "
                         f"{', '.join(table.text_columns) or 'none'}")
    captions = table.frame[column].fillna("").astype(str).tolist()
    split = table.frame["split"].to_numpy()
    train = np.flatnonzero((split == "train") & (np.array([bool(c.strip()) for c in captions])))
    val = np.flatnonzero((split == "val") & (np.array([bool(c.strip()) for c in captions])))
    if len(train) < 2:
        raise MhtagError(f"--captions {column!r}: fewer than two train rows have a caption")
    torch.manual_seed(options.seed)
    images = image_vectors(table, backbone)
    tower = LearnedTextTower(images.shape[1], options.width, options.layers, options.heads, options.context_length)
    tokens = tower.tokenize([captions[i] for i in train])
    x = torch.from_numpy(images[train]).float()
    optim = torch.optim.AdamW(tower.parameters(), lr=options.lr, weight_decay=0.01)
    steps = options.epochs * int(np.ceil(len(train) / options.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, options.lr, total_steps=max(steps, 1), pct_start=0.1)
    val_captions, val_images = [captions[i] for i in val], images[val]
    best, best_state, kept = -1.0, None, 0
    generator = torch.Generator().manual_seed(options.seed)
    with progress_bar("text tower", options.epochs, progress) as advance:
        for epoch in range(1, options.epochs + 1):
            tower.train()
            for batch in torch.randperm(len(train), generator=generator).split(options.batch_size):
                if len(batch) < 2:
                    continue
                t = tower(tokens[batch])
                logits = tower.logit_scale.exp().clamp(max=100) * x[batch] @ t.T
                target = torch.arange(len(batch))
                loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
            score = recall_at(tower, val_captions, val_images) if len(val) else float(epoch)
            _logger.info("text tower epoch %d: val recall@10 %.3f", epoch, score)
            if score > best:
                best, best_state, kept = score, copy.deepcopy(tower.state_dict()), epoch
            advance(1)
    tower.load_state_dict(best_state)
    tower.phrases = mine_phrases([captions[i] for i in train], options.min_count)
    save_text_tower(tower, out, column)
    return TextReport(folder=str(out), captions=len(train), val_recall_at_10=round(best, 4) if len(val) else None,
                      epochs_run=options.epochs, kept_epoch=kept, phrases=len(tower.phrases),
                      seconds=round(time.monotonic() - t0, 1))
