"""A row's image file, served only as the index recorded it: a regular file inside the folder it was indexed from
(uploads: the index's own `uploads/`), of the recorded size and content hash. A file replaced since, by another
image or by a link to `/etc/passwd`, is answered 404 and never sent. A client names a row id, never a path."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from mhtag.core.errors import ImageError, NotFoundError
from mhtag.data.images import content_hash, decode_image, read_image_bytes
from mhtag.index.store import snapshot

THUMB_SIDE = 256
INT64 = (-(2**63), 2**63 - 1)


class FileGone(NotFoundError):
    """The row exists, but its file is no longer the image that was indexed."""


@dataclass(frozen=True)
class StoredFile:
    rid: int
    path: str  # absolute, as indexed
    rel: str  # under the folder it was indexed from
    size: int
    sha1: str


def stored_file(db: str | Path, rid: int) -> StoredFile:
    """What the index recorded of row `rid`'s file (from the in-memory snapshot)."""
    snap = snapshot(db)
    pos = snap.position(rid) if INT64[0] <= rid <= INT64[1] else None
    if pos is None:
        raise NotFoundError(f"no row with id {rid}")
    row = {c: snap.rows.column(c)[pos].as_py() for c in ("path", "rel", "size", "id")}
    return StoredFile(rid, row["path"], row["rel"], row["size"], row["id"])


def _real_inside_root(f: StoredFile) -> str:
    """The file's real path, refused unless it lies inside the real folder the row was indexed from."""
    root = f.path[:-len(f.rel)].rstrip("/") if f.path.endswith(f.rel) else os.path.dirname(f.path)
    real, real_root = os.path.realpath(f.path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise FileGone(f"the file of row {f.rid} now points outside the folder it was indexed from")
    return real


def _verified(f: StoredFile, real: str) -> bytes:
    try:
        data = read_image_bytes(real, max_bytes=max(f.size, 1))
    except ImageError as exc:
        raise FileGone(f"the file of row {f.rid} cannot be served ({exc.reason})") from exc
    if len(data) != f.size or content_hash(data) != f.sha1:
        raise FileGone(f"the file of row {f.rid} has changed since it was indexed; run `mhtag index` again")
    return data


def original(f: StoredFile) -> tuple[bytes, str]:
    """The checked bytes of the file and their media type."""
    data = _verified(f, _real_inside_root(f))
    with Image.open(io.BytesIO(data)) as img:
        media = Image.MIME.get(img.format or "", "application/octet-stream")
    return data, media


def thumbnail(f: StoredFile) -> bytes:
    """A JPEG of at most THUMB_SIDE px, made once per version of the file (its stat is part of the cache key)."""
    real = _real_inside_root(f)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise FileGone(f"the file of row {f.rid} is gone") from exc
    return _thumbnail(f, real, st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=4096)
def _thumbnail(f: StoredFile, real: str, size: int, mtime_ns: int, inode: int) -> bytes:
    data = _verified(f, real)
    try:
        img = decode_image(data, f.rel, draft_size=(THUMB_SIDE, THUMB_SIDE))
    except ImageError as exc:
        raise FileGone(f"the file of row {f.rid} cannot be shown ({exc.reason})") from exc
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
