"""Data: safe image decoding, the label schema learned from a CSV, transforms and datasets.

A labels CSV has a `path` column (relative to the CSV's folder or to an images root) and one column per
attribute. Single-label cells hold one class; multi-label cells hold `|`-separated tags (empty = none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from mhtag.errors import ImageError, MhtagError

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # larger images are refused as possible decompression bombs
SPLITS = ("train", "val", "test")
MISSING, UNKNOWN = -1, -2  # target codes for a blank cell and a label outside the vocabulary
OTHER = "other"
TAG_SEP = "|"

# ---------------------------------------------------------------- images


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit scaled down, alpha composited over white, CMYK/palette converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray((arr / scale).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path, draft_size: tuple[int, int] | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` to an upright RGB image, or raise `ImageError` naming the file and the reason.

    `draft_size` (width, height) lets JPEG decode at a reduced scale that is still at least that large.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(path, "is a directory, not an image file")
    if not path.exists():
        raise ImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(path, f"{img.width}x{img.height} pixels is over the {max_pixels:,} limit "
                                           "(possible decompression bomb)")
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", draft_size)
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"corrupt or truncated image ({exc})") from exc


@dataclass
class ImageInfo:
    path: str
    width: int = 0
    height: int = 0
    mode: str = ""
    sha1: str = ""
    error: str | None = None


def probe_image_file(path: str | Path) -> ImageInfo:
    """Fully decode one file: its size, original mode and content hash, or the reason it is unusable."""
    info = ImageInfo(str(path))
    try:
        img = load_image(path)
        with Image.open(path) as raw:
            info.mode = raw.mode
        info.width, info.height = img.size
        info.sha1 = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except ImageError as exc:
        info.error = exc.reason
    return info


def probe_image_files(paths: list[str], workers: int = 4) -> list[ImageInfo]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        return list(pool.map(probe_image_file, paths, chunksize=64))


# ---------------------------------------------------------------- label schema


@dataclass
class Attribute:
    name: str
    kind: str  # "single" (softmax) or "multi" (sigmoid tags)
    classes: list[str]
    counts: list[int]  # training rows per class (multi: per tag)
    merged: list[str] = field(default_factory=list)  # rare classes folded into "other"

    @property
    def num_outputs(self) -> int:
        return len(self.classes)


@dataclass
class LabelSchema:
    attributes: list[Attribute]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __getitem__(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "attributes": [asdict(a) for a in self.attributes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSchema:
        return cls([Attribute(**a) for a in d["attributes"]])

    @property
    def version(self) -> str:
        """Content hash of the vocabularies: two models agree on labels iff their versions match."""
        body = [[a.name, a.kind, a.classes, a.merged] for a in self.attributes]
        return hashlib.sha1(json.dumps(body).encode()).hexdigest()[:12]

    @classmethod
    def fit(cls, frame: pd.DataFrame, attributes: list[str], multilabel: set[str], min_count: int = 0
            ) -> tuple[LabelSchema, dict[str, str]]:
        """Vocabularies from the training rows; returns the schema and {attribute: why it was dropped}."""
        attrs, dropped = [], {}
        for name in attributes:
            kind = "multi" if name in multilabel else "single"
            counts = value_counts(frame[name], kind)
            merged: list[str] = []
            if min_count and kind == "single":
                merged = sorted(c for c, n in counts.items() if n < min_count)
                if merged:
                    counts = {c: n for c, n in counts.items() if n >= min_count}
                    counts[OTHER] = counts.get(OTHER, 0) + sum(value_counts(frame[name], kind)[c] for c in merged)
            if kind == "single" and len(counts) < 2:
                dropped[name] = f"only {len(counts)} class in the training split ({', '.join(counts) or 'none'})"
                continue
            if kind == "multi" and not counts:
                dropped[name] = "no tags in the training split"
                continue
            classes = sorted(counts)
            attrs.append(Attribute(name, kind, classes, [int(counts[c]) for c in classes], merged))
        return cls(attrs), dropped

    def encode(self, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Targets per head (single: class index, MISSING or UNKNOWN; multi: 0/1 matrix) and unknown counts."""
        targets, unknown = {}, {}
        for a in self.attributes:
            index = {c: i for i, c in enumerate(a.classes)}
            index.update({c: index[OTHER] for c in a.merged})
            col = frame[a.name] if a.name in frame else pd.Series([None] * len(frame))
            if a.kind == "single":
                codes = np.array([MISSING if _blank(v) else index.get(str(v), UNKNOWN) for v in col], dtype=np.int64)
                unknown[a.name] = int((codes == UNKNOWN).sum())
            else:
                codes = np.zeros((len(frame), len(a.classes)), dtype=np.float32)
                n_unknown = 0
                for r, v in enumerate(col):
                    for tag in split_tags(v):
                        if tag in index:
                            codes[r, index[tag]] = 1.0
                        else:
                            n_unknown += 1
                unknown[a.name] = n_unknown
            targets[a.name] = codes
        return targets, unknown


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def split_tags(v: Any) -> list[str]:
    return [] if _blank(v) else [t.strip() for t in str(v).split(TAG_SEP) if t.strip()]


def value_counts(col: pd.Series, kind: str) -> dict[str, int]:
    values = [t for v in col for t in split_tags(v)] if kind == "multi" else [str(v) for v in col if not _blank(v)]
    return pd.Series(values, dtype=object).value_counts().to_dict() if values else {}


# ---------------------------------------------------------------- labels CSV


@dataclass
class Skipped:
    row: int  # line in the CSV (header = line 1)
    path: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} ({self.path}): {self.reason}"


@dataclass
class LabelTable:
    """The usable rows of a labels CSV: `frame` has `path`, `file` (absolute), `split`, `row` and attributes."""

    frame: pd.DataFrame
    attributes: list[str]
    multilabel: set[str]
    text_columns: list[str]
    skipped: list[Skipped]
    root: Path

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def absolute(path: str | Path) -> Path:
    """Absolute and `..`-free, without following symlinks: a folder of links to images stays that folder."""
    return Path(os.path.normpath(os.path.abspath(path)))


def hash_split(path: str) -> str:
    """Deterministic 80/10/10 split from the path alone, so it never changes as rows are added."""
    bucket = int(hashlib.sha1(path.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def _is_free_text(col: pd.Series) -> bool:
    values = col.dropna()
    return len(values) >= 20 and values.nunique() > 0.5 * len(values)


def read_labels(csv_path: str | Path, images_root: str | Path | None = None, multilabel: list[str] | tuple = (),
                ignore: list[str] | tuple = (), check_files: bool = True) -> LabelTable:
    """Read and validate a labels CSV; unusable rows are skipped with the reason, never silently dropped."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MhtagError(f"labels file {csv_path} does not exist")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MhtagError(f"{csv_path}: cannot parse as CSV ({str(exc).splitlines()[0]})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if "path" not in df.columns:
        raise MhtagError(f"{csv_path}: no 'path' column (columns are: {', '.join(df.columns)})")
    for col in [*multilabel, *ignore]:
        if col not in df.columns:
            raise MhtagError(f"{csv_path}: column {col!r} named in multilabel/ignore is not in the CSV")
    root = absolute(images_root if images_root is not None else csv_path.parent)
    has_split = "split" in df.columns
    files, splits, keep, skipped = [], [], [], []
    seen: dict[str, int] = {}
    for i, rec in enumerate(df.itertuples(index=False)):
        row = i + 2
        rel = "" if _blank(rec.path) else str(rec.path).strip()
        if not rel:
            skipped.append(Skipped(row, rel, "empty path"))
            continue
        full = absolute(root / rel)
        if not full.is_relative_to(root):
            skipped.append(Skipped(row, rel, f"path escapes the image root {root}"))
            continue
        if str(full) in seen:
            skipped.append(Skipped(row, rel, f"duplicate path (first on row {seen[str(full)]})"))
            continue
        seen[str(full)] = row
        if check_files and not full.is_file():
            skipped.append(Skipped(row, rel, "is a directory" if full.is_dir() else "file not found"))
            continue
        split = str(rec.split).strip().lower() if has_split and not _blank(rec.split) else hash_split(rel)
        if split not in SPLITS:
            skipped.append(Skipped(row, rel, f"split {split!r} is not one of {', '.join(SPLITS)}"))
            continue
        files.append(str(full))
        splits.append(split)
        keep.append(i)
    frame = df.iloc[keep].reset_index(drop=True)
    frame["path"] = frame["path"].str.strip()
    frame["file"], frame["split"], frame["row"] = files, splits, [k + 2 for k in keep]
    reserved = {"path", "split", "file", "row", *ignore}
    candidates = [c for c in df.columns if c not in reserved]
    text = [c for c in candidates if c not in multilabel and _is_free_text(frame[c])]
    if text:
        _logger.info("treating free-text column(s) %s as text, not heads", ", ".join(text))
    attributes = [c for c in candidates if c not in text]
    if not attributes:
        raise MhtagError(f"{csv_path}: no attribute columns besides path/split (columns: {', '.join(df.columns)})")
    return LabelTable(frame, attributes, set(multilabel), text, skipped, root)


def drop_unreadable(table: LabelTable, workers: int = 4) -> LabelTable:
    """Decode every image once; rows whose file is unusable move to `skipped` with the reason."""
    infos = probe_image_files(table.frame["file"].tolist(), workers)
    bad = [i for i, info in enumerate(infos) if info.error]
    for i in bad:
        table.skipped.append(Skipped(int(table.frame["row"].iat[i]), table.frame["path"].iat[i], infos[i].error))
    table.frame = table.frame.drop(index=bad).reset_index(drop=True)
    return table


# ---------------------------------------------------------------- transforms and datasets

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
    """Eval: letterbox + normalise. Train adds mild shift/scale, flips and colour jitter minus `forbid`."""
    size = tuple(data_config["input_size"])
    mean, std = data_config["mean"], data_config["std"]
    fill = tuple(int(round(m * 255)) for m in mean)  # pads normalise to zero
    steps: list[Any] = [Letterbox(size, fill, data_config.get("interpolation", "bicubic"))]
    if train:
        steps.append(T.RandomAffine(degrees=0, translate=(0.04, 0.04), scale=(0.92, 1.04), fill=fill))
        if "hflip" not in forbid:
            steps.append(T.RandomHorizontalFlip())
        steps.append(T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0 if "saturation" in forbid else 0.15,
                                   hue=0 if "hue" in forbid else 0.02))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ImageDataset(Dataset):
    """Images from files, each with its targets (if any); decodes JPEGs at reduced scale where possible."""

    def __init__(self, files: list[str], transform, targets: dict[str, np.ndarray] | None = None):
        self.files = files
        self.transform = transform
        self.targets = targets or {}
        size = transform.transforms[0].size if isinstance(transform.transforms[0], Letterbox) else None
        self.draft = (size[1], size[0]) if size else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        x = self.transform(load_image(self.files[i], draft_size=self.draft))
        return x, {k: torch.as_tensor(v[i]) for k, v in self.targets.items()}


class SafeImageDataset(ImageDataset):
    """For indexing: an unreadable file yields (None, i, reason) instead of stopping the whole run."""

    def __getitem__(self, i: int):
        try:
            return self.transform(load_image(self.files[i], draft_size=self.draft)), i, None
        except ImageError as exc:
            return None, i, exc.reason


def collate_safe(batch):
    """-> (stacked images or None, indices of the good ones, [(index, reason)] of the bad ones)."""
    good = [(x, i) for x, i, err in batch if err is None]
    bad = [(i, err) for x, i, err in batch if err is not None]
    xs = torch.stack([x for x, _ in good]) if good else None
    return xs, [i for _, i in good], bad
