"""Transforms built from the backbone's data config: letterbox (nothing cropped), normalise, label-safe augmentation."""

from __future__ import annotations

import re
from typing import Any

from PIL import Image
from torchvision import transforms as T

_COLOUR_NAME = re.compile(r"colou?r", re.I)
_SIDED_NAME = re.compile(r"^(view|side|orientation|direction|pose|facing)$|left|right", re.I)


def forbidden_augmentations(attributes: list[str], configured: dict[str, list[str]]) -> set[str]:
    """Augmentations that would corrupt some head's labels: colour heads forbid hue/saturation jitter,
    view/side heads forbid horizontal flips; `configured` adds more per attribute."""
    ops: set[str] = set()
    for name in attributes:
        if _COLOUR_NAME.search(name):
            ops |= {"hue", "saturation"}
        if _SIDED_NAME.search(name):
            ops.add("hflip")
        ops |= set(configured.get(name, []))
    return ops


def mirroring_forbidden(attributes: list[str], configured: dict[str, list[str]]) -> bool:
    """True when some head's labels change under a horizontal mirror: no flip in training, none at test time."""
    return "hflip" in forbidden_augmentations(attributes, configured)


class Letterbox:
    """Resize to fit inside (height, width) keeping the aspect ratio, then pad: nothing is cropped away."""

    def __init__(self, size: tuple[int, int], fill: tuple[int, int, int], interpolation: str = "bicubic"):
        self.size = size
        self.fill = fill
        self.resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(interpolation, Image.BICUBIC)

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        scale = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        if (nw, nh) != img.size:
            img = img.resize((nw, nh), self.resample)
        if (nw, nh) == (w, h):
            return img
        canvas = Image.new("RGB", (w, h), self.fill)
        canvas.paste(img, ((w - nw) // 2, (h - nh) // 2))
        return canvas


def build_transform(data_config: dict[str, Any], train: bool = False, forbid: set[str] = frozenset()) -> T.Compose:
    """Eval: letterbox + normalise. Train adds a mild 4% shift and -8%/+4% scale (twice that range and a rotation
    measured worse on fashion12k and pokemon), flips and colour jitter minus `forbid`."""
    size = tuple(data_config["input_size"])
    mean, std = data_config["mean"], data_config["std"]
    fill = tuple(int(round(m * 255)) for m in mean)  # pads normalise to zero
    steps: list[Any] = [Letterbox(size, fill, data_config.get("interpolation", "bicubic"))]
    if train:
        steps.append(T.RandomAffine(degrees=0.0, translate=(0.04, 0.04), scale=(0.92, 1.04), fill=fill))
        if "hflip" not in forbid:
            steps.append(T.RandomHorizontalFlip())
        jitter = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.15, "hue": 0.02}
        steps.append(T.ColorJitter(**{op: 0 if op in forbid else amount for op, amount in jitter.items()}))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
