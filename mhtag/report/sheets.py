"""Contact sheets: a grid of result thumbnails, each captioned with its score and attributes."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from mhtag.core.errors import ImageError, MhtagError
from mhtag.core.io import atomic_path
from mhtag.data.images import load_image
from mhtag.data.schema import join_tags
from mhtag.results import SearchHit

SHEET_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def check_sheet_path(path: Path) -> Path:
    """Refuse, before any work, a sheet path that cannot be written: no image extension, a folder, a missing
    or unwritable parent folder (no folders are created)."""
    path = Path(path)
    if path.is_dir():
        raise MhtagError(f"--sheet {path} is a folder; name an image file")
    if path.suffix.lower() not in SHEET_FORMATS:
        raise MhtagError(f"--sheet {path}: name it .jpg, .png or .webp")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MhtagError(f"--sheet {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MhtagError(f"--sheet {path}: not writable")
    return path


def contact_sheet(results: list[SearchHit], attributes: list[str], path: Path, thumb: int = 160,
                  columns: int = 6) -> Path:
    """A grid of result thumbnails, each captioned with its score and attributes; written atomically."""
    path = check_sheet_path(path)
    caption = 14 * (1 + min(len(attributes), 4))
    rows = max(1, -(-len(results) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(results):
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption)
        try:
            img = load_image(r.path)
            img.thumbnail((thumb - 4, thumb - 4))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except ImageError:
            draw.text((x + 4, y + thumb // 2), "unreadable", fill="red")
        row = r.model_dump()
        text = [f"{r.score:.3f}"] + [f"{a}: {_fmt(row[a])}"[:26] for a in attributes[:4] if row.get(a)]
        for j, t in enumerate(text):
            draw.text((x + 4, y + thumb + 14 * j), t, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format=SHEET_FORMATS[path.suffix.lower()])
    return path


def _fmt(v) -> str:
    return join_tags(v) if isinstance(v, list) else str(v)
