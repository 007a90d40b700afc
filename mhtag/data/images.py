"""Images: one rule for what an image file is, safe decoding to upright RGB, and walking folders for them."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mhtag.core.errors import ImageError, MhtagError
from mhtag.core.io import atomic_write_text, cache_dir
from mhtag.core.progress import progress_bar

_logger = logging.getLogger(__name__)

# What a folder walk picks up. A file named explicitly is tried whatever its extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # larger images are refused as possible decompression bombs
MAX_FILE_BYTES = 256 * 1024 * 1024  # larger files are refused before they are read (a 64 Mpx RGB TIFF is 192 MB)


def content_hash(data: bytes) -> str:
    """An image's identity: the SHA-1 of its bytes, hex (the feature store's, the index's and the server's key)."""
    return hashlib.sha1(data).hexdigest()


def file_hash(path: str | Path) -> str:
    """`content_hash` of a file's bytes, read a megabyte at a time (a checkpoint, an image being re-checked)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_image_name(path: str | Path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


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


@contextmanager
def _opened(data: bytes, name: str | Path, bombs: str) -> Iterator[Image.Image]:
    """The encoded image, opened lazily (header read, pixels not yet), with every way it can fail said as an
    `ImageError` naming `name`. `bombs`: "error" refuses PIL's decompression-bomb warning, "ignore" lets the
    caller check the size itself."""
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(bombs, Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                yield img
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, f"possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(name, "not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(name, f"corrupt or truncated image ({exc})") from exc


def decode_image(data: bytes, name: str | Path = "<upload>", draft_size: tuple[int, int] | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode encoded bytes to an upright RGB image (EXIF rotation applied; an animation's first frame),
    or raise `ImageError` naming `name` and the reason. `draft_size` (width, height) lets a JPEG decode at a
    reduced scale that is still at least that large."""
    with _opened(data, name, "error") as img:
        if img.width * img.height > max_pixels:
            raise ImageError(name, f"{img.width}x{img.height} pixels is over the {max_pixels:,} limit "
                                   "(possible decompression bomb)")
        if draft_size and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


def read_image_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or an `ImageError` saying why not. Opened without
    blocking and checked before anything is read, so a FIFO cannot hang the caller and a device such as
    /dev/zero cannot fill its memory."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        reason = "dangling symlink (its target does not exist)" if path.is_symlink() else "file not found"
        raise ImageError(path, reason) from exc
    except IsADirectoryError as exc:
        raise ImageError(path, "is a directory, not an image file") from exc
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(path, "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(path, "not a regular file (a device, FIFO or socket)")
        if st.st_size > max_bytes:
            raise ImageError(path, f"{st.st_size:,} bytes is over the {max_bytes:,} byte limit")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise ImageError(path, f"over the {max_bytes:,} byte limit")
    return data


def image_header(data: bytes, name: str | Path = "<upload>") -> tuple[int, int]:
    """(width, height) from the encoded header alone, nothing decoded: what a pixel budget is checked on."""
    with _opened(data, name, "ignore") as img:
        return img.width, img.height


def upright_size(data: bytes, name: str | Path = "<upload>") -> tuple[int, int]:
    """(width, height) as displayed, from the header and the EXIF orientation alone (5-8 turn by 90 degrees)."""
    with _opened(data, name, "ignore") as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(path: str | Path, draft_size: tuple[int, int] | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode the file at `path` (see `decode_image`)."""
    return decode_image(read_image_bytes(path), path, draft_size, max_pixels)


@dataclass
class ImageInfo:
    path: str
    width: int = 0  # as displayed: after EXIF rotation
    height: int = 0
    mode: str = ""
    sha1: str = ""
    error: str | None = None


def probe_image_file(path: str | Path) -> ImageInfo:
    """Fully decode one file: its upright size, original mode and content hash, or why it is unusable."""
    info = ImageInfo(str(path))
    try:
        data = read_image_bytes(path)
        img = decode_image(data, path)
        with Image.open(io.BytesIO(data)) as raw:
            info.mode = raw.mode
        info.width, info.height = img.size
        info.sha1 = content_hash(data)
    except ImageError as exc:
        info.error = exc.reason
    return info


CHECKS = "image_checks.json"  # in the cache folder: {path: [size, mtime_ns, error or null, sha1 or null]}
CHECK_CHUNK = 256  # files decoded between progress updates
CHECK_SAVE_S = 30.0  # the verdicts so far are saved at least this often


def probe_image_files(paths: list[str], workers: int = 4) -> list[ImageInfo]:
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        return list(pool.map(probe_image_file, paths, chunksize=64))


def probe_in_chunks(paths: list[str], workers: int = 4, progress: bool = False) -> Iterator[list[ImageInfo]]:
    """`probe_image_files` a chunk at a time, with a progress bar: what a long check is made of."""

    with progress_bar("checking images", len(paths), progress and bool(paths)) as advance:
        for start in range(0, len(paths), CHECK_CHUNK):
            infos = probe_image_files(paths[start:start + CHECK_CHUNK], workers)
            advance(len(infos))
            yield infos


@dataclass(frozen=True)
class FileCheck:
    error: str | None  # why the file is unusable; None: it decodes
    sha1: str | None  # the content hash of a usable file


def check_image_files(paths: list[str], workers: int = 4, progress: bool = False) -> list[FileCheck]:
    """Whether each file decodes, and its content hash. A file's verdict is kept in the cache, keyed by its size
    and modification time, so a training run does not decode a catalogue that it decoded before, unchanged; the
    verdicts are saved every half minute too, so a stopped check resumes where it was."""
    store, known = _read_checks()
    stats = [_stat(p) for p in paths]
    todo = [i for i, (p, st) in enumerate(zip(paths, stats, strict=True))
            if st is None or not _still_valid(known.get(p), st)]
    fresh, saved = {}, time.monotonic()
    done = 0
    for infos in probe_in_chunks([paths[i] for i in todo], workers, progress):
        for i, info in zip(todo[done:done + len(infos)], infos, strict=True):
            fresh[i] = FileCheck(info.error, info.sha1 or None)
            if stats[i] is not None:
                known[paths[i]] = [*stats[i], info.error, info.sha1 or None]
        done += len(infos)
        if time.monotonic() - saved > CHECK_SAVE_S or done == len(todo):
            _save_checks(store, known)
            saved = time.monotonic()
    return [fresh[i] if i in fresh else FileCheck(*known[p][2:]) for i, p in enumerate(paths)]


def image_errors(paths: list[str], workers: int = 4, progress: bool = False) -> list[str | None]:
    """Why each file is unusable (None: it decodes); see `check_image_files`."""
    return [check.error for check in check_image_files(paths, workers, progress)]


def forget_vanished_checks() -> int:
    """Drop the remembered checks of files that no longer exist; how many were dropped."""
    store, known = _read_checks()
    kept = {path: entry for path, entry in known.items() if os.path.exists(path)}
    if len(kept) < len(known):
        _save_checks(store, kept)
    return len(known) - len(kept)


def _save_checks(store: Path, known: dict[str, list]) -> None:
    """The verdicts are a cache: a full or read-only disk costs the next run a re-check, not this run."""
    try:
        atomic_write_text(store, json.dumps(known))
    except OSError as exc:
        _logger.warning("image checks not saved to %s (%s)", store, exc.strerror or exc)


def _read_checks() -> tuple[Path, dict[str, list]]:
    store = cache_dir() / CHECKS
    try:
        return store, json.loads(store.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: checks are only a cache
        return store, {}


def _still_valid(entry: list | None, stat: tuple[int, int]) -> bool:
    return entry is not None and len(entry) == 4 and entry[:2] == list(stat)  # 3 long: written before the hash


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class Walk:
    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): loops, unreadable folders


def walk_images(paths: list[str | Path]) -> Walk:
    """Files as given, folders walked recursively (following links) for image names; a missing path is a
    user error, and a symlink loop or an unreadable folder is reported, not silently skipped."""
    out = Walk()
    for p in map(Path, paths):
        if p.is_dir():
            _walk_folder(p, out)
        elif p.exists():
            out.files.append(p)
        else:
            raise MhtagError(f"{p}: no such file or folder")
    return out


def _walk_folder(root: Path, out: Walk) -> None:
    found: list[Path] = []
    on_path: dict[str, set[str]] = {str(root): {os.path.realpath(root)}}

    def onerror(exc: OSError) -> None:
        out.problems.append((str(exc.filename), f"folder cannot be read ({exc.strerror})"))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=onerror):
        ancestors = on_path.pop(folder, set())
        keep = []
        for d in sorted(dirs):
            full = os.path.join(folder, d)
            real = os.path.realpath(full)
            if real in ancestors:
                out.problems.append((full, "symlink loop (points back to a folder above it); not followed"))
                continue
            on_path[full] = ancestors | {real}
            keep.append(d)
        dirs[:] = keep
        for f in filter(is_image_name, files):
            full = os.path.join(folder, f)
            if os.path.isfile(full):
                found.append(Path(full))
            else:
                out.problems.append((full, _not_a_file(full)))
    out.files += sorted(found)


def _not_a_file(path: str) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return "dangling symlink (its target does not exist)"
    return "not a regular file (a device, FIFO or socket)"


@dataclass
class FileFacts:
    """What indexing stores about a file, taken from the one read that decoded it."""

    sha1: str
    size: int
    width: int  # upright (after EXIF rotation)
    height: int


def read_facts(files: list[str], progress: bool = False) -> tuple[dict[int, FileFacts], list[tuple[int, str]]]:
    """What an index stores of each file, from its bytes and header alone (nothing decoded): {index: FileFacts},
    and [(index, reason)] for the files that cannot be read."""
    from concurrent.futures import ThreadPoolExecutor

    from mhtag.core.progress import progress_bar

    def facts(path: str) -> FileFacts | str:
        try:
            data = read_image_bytes(path)
            width, height = upright_size(data, path)
        except ImageError as exc:
            return exc.reason
        return FileFacts(content_hash(data), len(data), width, height)

    found, failed = {}, []
    with progress_bar("reading", len(files), progress and len(files) > 1000) as advance, \
            ThreadPoolExecutor(4) as pool:  # reading and hashing release the GIL
        for i, fact in enumerate(pool.map(facts, files, chunksize=64)):
            if isinstance(fact, FileFacts):
                found[i] = fact
            else:
                failed.append((i, fact))
            advance(1)
    return found, failed
