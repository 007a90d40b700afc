"""A synthetic labelled dataset: shapes with independent colour, size, background and rotation, plus a
multi-label group of small marks. Tests and the demo run on it offline in seconds."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from mhtag.core.io import atomic_path
from mhtag.data.schema import join_tags

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SIZES = ("small", "large")
BACKGROUNDS = {"light": (235, 235, 230), "dark": (45, 45, 50)}
MARKS = ("dot", "bar", "cross")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    n = {"square": 4, "triangle": 3}[shape]
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def draw_sample(shape: str, colour: str, size: str, background: str, marks: list[str], rng: random.Random,
                px: int = 96) -> Image.Image:
    bg = BACKGROUNDS[background]
    img = Image.new("RGB", (px, px), tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in bg))
    d = ImageDraw.Draw(img)
    r = px * (0.17 if size == "small" else 0.33) * rng.uniform(0.9, 1.1)
    cx, cy = px / 2 + rng.uniform(-0.08, 0.08) * px, px / 2 + rng.uniform(-0.08, 0.08) * px
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon(_polygon(shape, cx, cy, r * 1.15, rng.uniform(0, 2 * math.pi)), fill=fill)
    ink = (250, 250, 250) if background == "dark" else (10, 10, 10)
    m = px // 16
    if "dot" in marks:
        d.ellipse([m, m, m + px // 7, m + px // 7], fill=ink)
    if "bar" in marks:
        d.rectangle([px // 6, px - m - px // 14, px - px // 6, px - m], fill=ink)
    if "cross" in marks:
        x0, y0, s = px - m - px // 6, m, px // 6
        d.line([x0, y0, x0 + s, y0 + s], fill=ink, width=max(2, px // 32))
        d.line([x0, y0 + s, x0 + s, y0], fill=ink, width=max(2, px // 32))
    return img


def make_demo_data(out: str | Path, n: int = 1000, px: int = 96, seed: int = 0) -> Path:
    """Write `n` images and `labels.csv` (path, shape, colour, size, background, marks, split) under `out`."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = {"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "size": rng.choice(SIZES),
                 "background": rng.choice(list(BACKGROUNDS))}
        marks = [mk for mk in MARKS if rng.random() < 0.4]
        rel = f"images/{i:05d}.png"
        draw_sample(**label, marks=marks, rng=rng, px=px).save(out / rel)
        split = "train" if i % 10 < 7 else "val" if i % 10 < 8 else "test"
        rows.append({"path": rel, **label, "marks": join_tags(marks), "split": split})
    with atomic_path(out / "labels.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "labels.csv"
