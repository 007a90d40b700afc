"""The tagger: one shared backbone, one independent head per attribute, and the weighted multi-head loss."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mhtag.backbones import Backbone, create_backbone
from mhtag.data import Attribute, LabelSchema
from mhtag.errors import MhtagError

CHECKPOINT_FORMAT = 1


def make_head(in_features: int, out_features: int, kind: str = "linear", hidden: int = 512,
              dropout: float = 0.1) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.GELU(),
                             nn.Dropout(dropout), nn.Linear(hidden, out_features))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))


class Tagger(nn.Module):
    """`forward_features` -> pooled embedding, `forward_heads` -> {attribute: logits}, `forward` -> both."""

    def __init__(self, backbone: Backbone, schema: LabelSchema, head: str = "linear", head_hidden: int = 512,
                 dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.schema = schema
        self.num_features = backbone.num_features
        self.feature_norm = nn.BatchNorm1d(self.num_features)  # puts any backbone's features on one scale
        self.heads = nn.ModuleDict({
            a.name: make_head(self.num_features, a.num_outputs, head, head_hidden, dropout)
            for a in schema.attributes
        })
        self.thresholds_: dict[str, list[float]] = {
            a.name: [0.5] * a.num_outputs for a in schema.attributes if a.kind == "multi"
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.feature_norm(features.float())
        return {name: head(f) for name, head in self.heads.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.forward_features(x))

    def probabilities(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Softmax for single-label heads, sigmoid for tag groups."""
        return {a.name: (torch.softmax if a.kind == "single" else _sigmoid)(logits[a.name].float(), -1)
                for a in self.schema.attributes}


def _sigmoid(x: torch.Tensor, _dim: int) -> torch.Tensor:
    return torch.sigmoid(x)


# ---------------------------------------------------------------- loss


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


class MultiHeadLoss(nn.Module):
    """Total = sum over heads of weight * loss. Rows with a blank or unknown label are left out of that head."""

    def __init__(self, schema: LabelSchema, head_weights: dict[str, float] | None = None,
                 weighting: str = "sqrt", cap: float = 10.0, label_smoothing: float = 0.0, n_train: int = 0):
        super().__init__()
        head_weights = head_weights or {}
        unknown = set(head_weights) - set(schema.names)
        if unknown:
            raise MhtagError(f"head_weights names unknown attribute(s) {sorted(unknown)}; heads are {schema.names}")
        self.schema = schema
        self.head_weights = {a.name: float(head_weights.get(a.name, 1.0)) for a in schema.attributes}
        self.label_smoothing = label_smoothing
        for a in schema.attributes:
            w = self._weights(a, weighting, cap, n_train)
            self.register_buffer(f"w_{a.name}", w if w is not None else torch.empty(0), persistent=False)

    @staticmethod
    def _weights(a: Attribute, weighting: str, cap: float, n_train: int) -> torch.Tensor | None:
        if a.kind == "single":
            return class_weights(a.counts, weighting, cap)
        return pos_weights(a.counts, n_train, weighting, cap)

    def forward(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_head: dict[str, torch.Tensor] = {}
        for a in self.schema.attributes:
            out, y = logits[a.name].float(), targets[a.name]
            w = getattr(self, f"w_{a.name}")
            w = w if w.numel() else None
            if a.kind == "single":
                valid = y >= 0
                if not valid.any():
                    continue
                per_head[a.name] = F.cross_entropy(out[valid], y[valid], weight=w,
                                                   label_smoothing=self.label_smoothing)
            else:
                per_head[a.name] = F.binary_cross_entropy_with_logits(out, y.float(), pos_weight=w)
        if not per_head:
            raise MhtagError("a batch had no usable label for any head")
        total = sum(self.head_weights[k] * v for k, v in per_head.items())
        return total, per_head


# ---------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a checkpoint is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def checkpoint_state(model: Tagger, config: dict[str, Any], data_config: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "backbone": model.backbone.name,
        "config": config,
        "data_config": data_config,
        "schema": model.schema.to_dict(),
        "thresholds": model.thresholds_,
        "model": model.state_dict(),
        **(extra or {}),
    }


def tagger_from_checkpoint(state: dict[str, Any]) -> Tagger:
    """Rebuild the exact model from a checkpoint; no weights are downloaded (they are all in `state`)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise MhtagError(f"checkpoint format {state.get('format')} is not supported (expected {CHECKPOINT_FORMAT})")
    cfg = state["config"]
    backbone = create_backbone(state["backbone"], pretrained=False)
    backbone.data_config = state["data_config"]
    model = Tagger(backbone, LabelSchema.from_dict(state["schema"]), cfg["head"], cfg["head_hidden"],
                   cfg["dropout"])
    model.load_state_dict(state["model"])
    model.thresholds_ = {k: list(v) for k, v in state["thresholds"].items()}
    return model.eval()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise MhtagError(f"no model checkpoint at {path}; train one with `mhtag train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise MhtagError(f"{path}: cannot read checkpoint ({exc})") from exc


def thresholds_array(model: Tagger, name: str) -> np.ndarray:
    return np.asarray(model.thresholds_[name], dtype=np.float32)
