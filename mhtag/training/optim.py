"""Optimiser and schedule: AdamW with weight decay on weights only, cosine decay after a linear warm-up."""

from __future__ import annotations

import math

import torch

from mhtag.core.config import TrainConfig
from mhtag.core.errors import MhtagError
from mhtag.models.tagger import Tagger


def _decay_groups(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> list[dict]:
    """Biases and normalisation scales (1-d tensors) are not decayed."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay},
                        {"params": no_decay, "lr": lr, "weight_decay": 0.0}) if g["params"]]


def head_optimizer(model: Tagger, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The probe's: AdamW on the heads alone at `probe_lr` (the feature norm is fixed there: a standard scaler)."""
    return torch.optim.AdamW(_decay_groups(list(model.heads.parameters()), cfg.probe_lr, cfg.weight_decay),
                             fused=True)


def full_optimizer(model: Tagger, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The fine-tune's: AdamW on the backbone (see `_backbone_groups`), the feature norm and the heads at `lr`.
    Fused: one kernel for every tensor, a third of the per-tensor loop's time on CPU steps."""
    heads = list(model.heads.parameters()) + list(model.feature_norm.parameters())
    return torch.optim.AdamW(_backbone_groups(model, cfg) + _decay_groups(heads, cfg.lr, cfg.weight_decay),
                             fused=True)


def _backbone_groups(model: Tagger, cfg: TrainConfig) -> list[dict]:
    """The backbone at `backbone_lr_mult` x lr; with `layer_decay`, that is its top layer's rate and each layer
    below gets `layer_decay` times the one above (timm's layer grouping: stem, each block, head)."""
    lr = cfg.lr * cfg.backbone_lr_mult
    if cfg.layer_decay is None:
        return _decay_groups([p for p in model.backbone.parameters() if p.requires_grad], lr, cfg.weight_decay)
    body = model.backbone.body
    if not hasattr(body, "group_matcher"):
        raise MhtagError(f"layer_decay needs a timm backbone with layer groups; {model.backbone.name} has none")
    from timm.optim import param_groups_layer_decay  # here: timm takes seconds to import, and only this needs it

    groups = param_groups_layer_decay(body, cfg.weight_decay, layer_decay=cfg.layer_decay)
    return [{"params": g["params"], "lr": lr * g["lr_scale"], "weight_decay": g["weight_decay"]} for g in groups]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float = 0.05):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
