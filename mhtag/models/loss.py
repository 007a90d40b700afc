"""The multi-head loss: the weighted sum of each head's cross-entropy (single-label) or BCE (tag groups), against
the labels or, where a batch carries them (knowledge distillation), soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mhtag.core.errors import MhtagError
from mhtag.data.schema import Attribute, LabelSchema


def soft_key(name: str) -> tuple[str, str]:
    """Where a batch's targets hold an attribute's soft targets (per-class probabilities): a tuple, so that it can
    never clash with an attribute (a column name)."""
    return ("soft", name)


def class_weights(counts: list[int], scheme: str, cap: float) -> torch.Tensor | None:
    """Inverse-frequency weights (or their square root), mean 1 over the training rows, capped at `cap`."""
    if scheme == "none":
        return None
    n = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    w = n.sum() / (len(n) * n)
    if scheme == "sqrt":
        w = w.sqrt()
    w = w / ((w * n).sum() / n.sum())
    return w.clamp(max=cap).float()


def pos_weights(counts: list[int], total: int, scheme: str, cap: float) -> torch.Tensor | None:
    """BCE `pos_weight` per tag: negatives / positives (or its square root), capped."""
    if scheme == "none":
        return None
    pos = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    w = (total - pos).clamp(min=1) / pos
    if scheme == "sqrt":
        w = w.sqrt()
    return w.clamp(max=cap).float()


def _per_head(schema: LabelSchema, key: str, values: dict[str, float] | None, default: float) -> dict[str, float]:
    """A value per head: `values`' where it names the head, else `default`; a name that is no head is refused."""
    values = values or {}
    unknown = set(values) - set(schema.names)
    if unknown:
        raise MhtagError(f"{key} names unknown attribute(s) {sorted(unknown)}; heads are {schema.names}")
    return {a.name: float(values.get(a.name, default)) for a in schema.attributes}


class MultiHeadLoss(nn.Module):
    """Total = sum over heads of weight * loss. Rows with a blank or unknown label are left out of that head.
    A head whose targets include `soft_key(name)` learns those probabilities instead of the one-hot labels."""

    def __init__(self, schema: LabelSchema, head_weights: dict[str, float] | None = None,
                 weighting: str = "none", cap: float = 10.0, n_train: int = 0, tag_weighting: str = "sqrt"):
        super().__init__()
        self.schema = schema
        self.head_weights = _per_head(schema, "head_weights", head_weights, 1.0)
        for a in schema.attributes:
            w = self._weights(a, tag_weighting if a.multi else weighting, cap, n_train)
            self.register_buffer(f"w_{a.name}", w if w is not None else torch.empty(0), persistent=False)

    @staticmethod
    def _weights(a: Attribute, weighting: str, cap: float, n_train: int) -> torch.Tensor | None:
        if a.multi:
            return pos_weights(a.counts, n_train, weighting, cap)
        return class_weights(a.counts, weighting, cap)

    def forward(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_head: dict[str, torch.Tensor] = {}
        for a in self.schema.attributes:
            out, y, soft = logits[a.name].float(), targets[a.name], targets.get(soft_key(a.name))
            w = getattr(self, f"w_{a.name}")
            w = w if w.numel() else None
            if a.multi:
                per_head[a.name] = F.binary_cross_entropy_with_logits(out, (y if soft is None else soft).float(),
                                                                      pos_weight=w)
                continue
            known = y >= 0  # missing and unknown labels (negative codes) add nothing
            if not known.any():
                continue
            if soft is None:
                per_head[a.name] = F.cross_entropy(out, y.clamp(min=-1), weight=w, ignore_index=-1)
            else:
                per_head[a.name] = F.cross_entropy(out[known], soft[known].float(), weight=w)
        if not per_head:
            raise MhtagError("a batch had no usable label for any head")
        total = sum(self.head_weights[k] * v for k, v in per_head.items())
        return total, per_head
