"""Controlled distribution shifts: what a real-world photo does to an image that the catalogue shot cleanly
(an object on white, centred, upright, well lit, sharp). Each shift is a deterministic function of the image and
a seed, so a robustness figure can be reproduced exactly."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance

WHITE = 235  # a catalogue background pixel: every channel at least this bright


def _background_mask(img: Image.Image) -> np.ndarray:
    return (np.asarray(img.convert("RGB")) >= WHITE).all(-1)


def _replace_background(img: Image.Image, backdrop: np.ndarray) -> Image.Image:
    """The near-white pixels replaced by `backdrop` (an HxWx3 array of the image's size)."""
    pixels = np.asarray(img.convert("RGB")).copy()
    mask = _background_mask(img)
    pixels[mask] = backdrop[mask]
    return Image.fromarray(pixels)


def coloured_background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A flat, saturated random colour behind the object instead of white."""
    colour = rng.integers(0, 256, 3)
    colour[rng.integers(3)] = rng.integers(0, 80)  # at least one dark channel: a real colour, not near-white
    return _replace_background(img, np.broadcast_to(colour.astype(np.uint8), (img.height, img.width, 3)))


def cluttered_background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A blotchy multicoloured scene behind the object (coarse random colours, smoothly upscaled)."""
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize(img.size, Image.Resampling.BICUBIC))
    return _replace_background(img, scene)


def off_centre_small(img: Image.Image, rng: np.random.Generator, scale: float = 0.6) -> Image.Image:
    """The object at `scale` of its size, placed at a random spot on a white canvas of the original size."""
    small = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                      Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", img.size, (255, 255, 255))
    canvas.paste(small, (int(rng.integers(0, img.width - small.width + 1)),
                         int(rng.integers(0, img.height - small.height + 1))))
    return canvas


def rotation(img: Image.Image, rng: np.random.Generator, degrees: float = 20.0) -> Image.Image:
    """Turned by +-`degrees` (the sign at random), the corners filled white."""
    angle = degrees if rng.random() < 0.5 else -degrees
    return img.convert("RGB").rotate(angle, Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))


def jpeg_30(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encoded as a JPEG of quality 30 (blocks, smeared colour)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=30)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def brightness(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Under- or over-exposed (x0.6 or x1.4, at random)."""
    return ImageEnhance.Brightness(img.convert("RGB")).enhance(0.6 if rng.random() < 0.5 else 1.4)


def low_resolution(img: Image.Image, rng: np.random.Generator, factor: int = 3) -> Image.Image:
    """A third of the resolution, scaled back up (a small crop of a larger photo)."""
    rgb = img.convert("RGB")
    small = rgb.resize((max(1, img.width // factor), max(1, img.height // factor)), Image.Resampling.BILINEAR)
    return small.resize(img.size, Image.Resampling.BILINEAR)


Shift = Callable[[Image.Image, np.random.Generator], Image.Image]

SHIFTS: dict[str, Shift] = {
    "coloured_background": coloured_background,
    "cluttered_background": cluttered_background,
    "off_centre_small": off_centre_small,
    "rotation": rotation,
    "jpeg_30": jpeg_30,
    "brightness": brightness,
    "low_resolution": low_resolution,
}


def apply_shift(name: str, img: Image.Image, seed: int) -> Image.Image:
    """The image under shift `name` ("clean": as it is), with a random stream of its own (`seed`)."""
    if name == "clean":
        return img.convert("RGB")
    return SHIFTS[name](img, np.random.default_rng(seed))
