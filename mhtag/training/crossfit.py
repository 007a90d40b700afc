"""Out-of-fold head probabilities: linear heads on frozen embeddings, trained K times, each time without the
fold they then predict, so that no row is ever judged by a model that trained on its label."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mhtag.data.schema import LabelSchema
from mhtag.models.loss import MultiHeadLoss
from mhtag.models.tagger import make_head
from mhtag.training.batches import TensorBatches
from mhtag.training.optim import cosine_with_warmup


class LinearHeads(nn.Module):
    def __init__(self, dim: int, schema: LabelSchema):
        super().__init__()
        self.schema = schema
        self.norm = nn.BatchNorm1d(dim)
        self.heads = nn.ModuleDict({a.name: make_head(dim, a.num_outputs) for a in schema.attributes})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.norm(x)
        return {k: h(f) for k, h in self.heads.items()}

    def probabilities(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        logits = self(x)
        return {a.name: (torch.sigmoid if a.multi else lambda t: torch.softmax(t, -1))(logits[a.name]).numpy()
                for a in self.schema.attributes}


def fit_heads(x: np.ndarray, targets: dict[str, np.ndarray], schema: LabelSchema, epochs: int = 40,
              lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0) -> LinearHeads:
    torch.manual_seed(seed)
    model = LinearHeads(x.shape[1], schema)
    loss_fn = MultiHeadLoss(schema, weighting="none", n_train=len(x), tag_weighting="none")
    generator = torch.Generator().manual_seed(seed)
    batches = TensorBatches(x.astype(np.float32), targets, 256, True, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = cosine_with_warmup(optimizer, epochs * len(batches))
    model.train()
    for _ in range(epochs):
        for xb, yb in batches:
            loss, _ = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per row, balanced and seeded."""
    return np.random.default_rng(seed).permutation(n) % folds


@torch.no_grad()
def out_of_fold_probabilities(x: np.ndarray, targets: dict[str, np.ndarray], schema: LabelSchema,
                              fold: np.ndarray, epochs: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """{attribute: (rows, outputs)} where row i's probabilities come from heads trained without i's fold."""
    out = {a.name: np.zeros((len(x), a.num_outputs), dtype=np.float32) for a in schema.attributes}
    for f in np.unique(fold):
        held = fold == f
        with torch.enable_grad():
            heads = fit_heads(x[~held], {k: v[~held] for k, v in targets.items()}, schema, epochs, seed=seed + int(f))
        for name, p in heads.probabilities(torch.from_numpy(x[held].astype(np.float32))).items():
            out[name][held] = p
    return out
