"""The service's writes: images uploaded to an index (kept in its own `uploads/` folder, named by content, so the
same image twice is one file and one row) and rows deleted by id."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.io import atomic_write_bytes
from mhtag.core.storage import is_remote, location
from mhtag.data.images import content_hash, decode_image
from mhtag.data.labels import absolute
from mhtag.index.columns import rid_for
from mhtag.index.guard import guard_index
from mhtag.index.labels import CheckedLabels, checked_labels
from mhtag.index.meta import IndexMeta, require_meta
from mhtag.index.rows import KnownLabels
from mhtag.index.store import open_table, read_columns, sync_vectors, writer_lock
from mhtag.results import Added, Deleted

if TYPE_CHECKING:
    from mhtag.inference.encoder import Encoder

UPLOADS = "uploads"  # folder inside the index where uploaded images are kept
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@guard_index
def add_images(db: str | Path, images: list[bytes], enc: Encoder, labels: list[dict[str, Any]] | None = None,
               add_values: bool = False) -> Added:
    """Store uploaded images and index them as `index_images` does, with optional known labels per image (checked
    by `checked_labels`: a value new to an attribute only with `add_values`)."""
    if is_remote(db):
        raise MhtagError(f"index {db} is on object storage; uploads are kept in a local index's folder. Index "
                         "the images with `mhtag index DIR --db URI` instead")
    db = Path(db)
    meta = require_meta(db)
    if labels is not None and len(labels) != len(images):
        raise MhtagError(f"{len(labels)} label set(s) for {len(images)} image(s)")
    checked = [checked_labels(meta, given, add_values) for given in labels] if labels else None
    folder = db / UPLOADS
    names = [_store_upload(folder, data, i) for i, data in enumerate(images)]
    known = _upload_labels(meta, names, checked) if checked else None
    from mhtag.core.runtime import DistInfo  # here: indexing loads torch, deleting a row does not
    from mhtag.index.build import IndexOptions, index_writer, make_plan, write_plan

    single = DistInfo()  # the service writes in its own process
    with index_writer(db, enc, known, folder, rebuild=False, dist=single) as (table, meta):
        plan = make_plan(table, folder, {n: folder / n for n in names}, meta, known, complete=False)
        plan, written = write_plan(db, table, plan, meta, enc, IndexOptions(workers=0), single)
    return Added(ids=[rid_for(str(absolute(folder / n))) for n in names], added=written.new + written.changed,
                 unchanged=plan.unchanged + len(plan.refreshed), failed=written.failed)


def _store_upload(folder: Path, data: bytes, i: int) -> str:
    decode_image(data, f"upload {i + 1}")  # refuses what is not a usable image, before anything is written
    with Image.open(io.BytesIO(data)) as img:
        ext = _EXTENSIONS.get(img.format or "", "")
    if not ext:
        raise MhtagError(f"upload {i + 1}: this image format cannot be stored; send JPEG, PNG or WebP")
    name = content_hash(data) + ext
    if not (folder / name).is_file():
        atomic_write_bytes(folder / name, data)
    return name


def _upload_labels(meta: IndexMeta, names: list[str], checked: list[CheckedLabels]) -> KnownLabels:
    kinds = {a.name: a.kind for a in meta.attributes if any(a.name in c.stored for c in checked)}
    return KnownLabels({name: c.stored for name, c in zip(names, checked, strict=True)}, {}, kinds)


@guard_index
def delete_row(db: str | Path, rid: int) -> Deleted:
    """Remove one row (and, for an uploaded image, its file: else the next upload pass would add it back).
    A catalogue file still on disk comes back with the next `mhtag index` of its folder."""
    db = location(db)
    with writer_lock(db):
        table = open_table(db)
        rows = read_columns(table, ["path"], where=f"rid = {int(rid)}").to_pylist()
        if not rows:
            raise NotFoundError(f"no row with id {rid} in index {db}")
        table.delete(f"rid = {int(rid)}")
        sync_vectors(db)
        path = Path(rows[0]["path"])
        if not is_remote(db) and path.parent == absolute(db / UPLOADS):
            path.unlink(missing_ok=True)
    return Deleted(id=int(rid))
