"""Training phases: what differs between training heads on frozen features (the probe) and training the whole
network (the fine-tune). Each phase owns its epochs, batches, optimizer, forward pass and frozen parts; `fit` runs
one loop over whichever phase it is given. LP-FT is the probe phase followed by the fine-tune phase started from
the probe's heads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mhtag.core.config import TrainConfig
from mhtag.core.runtime import DistInfo
from mhtag.models.tagger import Tagger
from mhtag.training.batches import image_loaders, probe_loaders
from mhtag.training.optim import full_optimizer, head_optimizer


class Phase:
    """The parts of a training phase; `fit`'s loop calls them in order."""

    name: str
    shows_batches: bool  # a progress bar per epoch (worth it where an epoch takes minutes)

    def epochs(self, cfg: TrainConfig) -> int:
        raise NotImplementedError

    def loaders(self, model: Tagger, cfg: TrainConfig, data: tuple, device: torch.device, dist: DistInfo,
                generator: torch.Generator, progress: bool) -> tuple[Any, Any]:
        raise NotImplementedError

    def freeze(self, model: Tagger, train_loader: Any, resumed: bool) -> None:
        """Fix what this phase does not train (before the optimizer sees the parameters)."""

    def optimizer(self, model: Tagger, cfg: TrainConfig) -> torch.optim.Optimizer:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module) -> Callable:
        raise NotImplementedError

    def start_epoch(self, model: Tagger, net: torch.nn.Module, train_loader: Any, cfg: TrainConfig,
                    epoch: int) -> None:
        """Train mode for the epoch, with the frozen parts kept in eval mode."""
        net.train()

    def held_copy(self, state: dict[str, Any]) -> dict[str, Any]:
        """An epoch's model tensors copied so that later steps cannot change them."""
        return {k: v.clone() for k, v in state.items()}

    def log_every(self, epochs: int) -> int:
        return 1


class ProbePhase(Phase):
    """Linear heads on the frozen backbone's cached embeddings: seconds on a CPU."""

    name = "probe"
    shows_batches = False

    def epochs(self, cfg: TrainConfig) -> int:
        return cfg.probe_epochs

    def loaders(self, model, cfg, data, device, dist, generator, progress):
        return probe_loaders(model, cfg, *data, device, generator, progress)

    def freeze(self, model: Tagger, train_loader: Any, resumed: bool) -> None:
        """The backbone is frozen; the feature norm is a standard scaler of the training features, also frozen,
        so the heads train on a stable input (a linear head absorbs any affine map). A fine-tune starts from it."""
        model.backbone.requires_grad_(False)
        if not resumed:
            standardise_features(model.feature_norm, train_loader.x)
        model.feature_norm.requires_grad_(False)

    def optimizer(self, model, cfg):
        return head_optimizer(model, cfg)

    def forward(self, model):
        return model.forward_heads  # the batches are embeddings already

    def start_epoch(self, model, net, train_loader, cfg, epoch):
        net.train()
        model.feature_norm.eval()

    def held_copy(self, state):
        """The frozen backbone's tensors never change: shared, not copied (they were 90% of the state)."""
        return {k: v if k.startswith("backbone.") else v.clone() for k, v in state.items()}

    def log_every(self, epochs: int) -> int:
        return max(1, epochs // 6)


class FinetunePhase(Phase):
    """The whole network on decoded, augmented images: the backbone at `backbone_lr_mult` x lr."""

    name = "finetune"
    shows_batches = True

    def epochs(self, cfg: TrainConfig) -> int:
        return cfg.epochs

    def loaders(self, model, cfg, data, device, dist, generator, progress):
        return image_loaders(model, cfg, *data, device, dist, generator)

    def optimizer(self, model, cfg):
        return full_optimizer(model, cfg)

    def forward(self, model):
        return model

    def start_epoch(self, model, net, train_loader, cfg, epoch):
        train_loader.sampler.set_epoch(epoch)  # the epoch's augmentation draws, whatever the resumes
        net.train()
        if cfg.freeze_bn:  # the pretrained BatchNorm statistics stay (measured: small data, small batches)
            for m in model.backbone.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()


PROBE, FINETUNE = ProbePhase(), FinetunePhase()
PHASES = {p.name: p for p in (PROBE, FINETUNE)}


def standardise_features(norm: torch.nn.BatchNorm1d, features: torch.Tensor) -> None:
    """Fix `norm` to the features' mean and variance (a standard scaler) with unit scale and zero shift."""
    with torch.no_grad():
        norm.running_mean.copy_(features.mean(0))
        norm.running_var.copy_(features.var(0))
        norm.weight.fill_(1.0)
        norm.bias.zero_()
