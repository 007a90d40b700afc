"""`index_images(DIR)`: embed every image under DIR, run the heads, and store one row per image.

The work is a plan (what is new, changed, unchanged or gone), shards of the plan (one per torchrun process),
the writes (batches of rows, each one atomic LanceDB commit) and a report. A rerun skips files whose size and
mtime are unchanged (`verify` also compares content hashes), re-embeds changed ones and, with `prune`, drops
rows of deleted files; a file with a new mtime but the same bytes (a copy, a re-mount) or new known labels
only has those columns updated. A killed run resumes with no duplicate and no lost row.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
from lancedb.expr import col
from PIL import Image

from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.io import atomic_write_bytes
from mhtag.core.runtime import DistInfo, init_distributed
from mhtag.core.storage import is_remote, location
from mhtag.data.images import decode_image, walk_images
from mhtag.data.labels import absolute, read_csv_frame, read_labels
from mhtag.data.schema import AttributeKind, check_distinct_columns, encode_tags, is_blank, split_tags
from mhtag.index.columns import StoredAttribute, arrow_schema, rid_for
from mhtag.index.guard import guard_index
from mhtag.index.labels import CheckedLabels, checked_labels
from mhtag.index.meta import IndexMeta, read_meta, write_meta
from mhtag.index.neighbours import calibrate_fusion
from mhtag.index.predict import check_compatible
from mhtag.index.rows import KnownLabels, Plan, Written, label_columns, row_of
from mhtag.index.store import DEFAULT_DB, drop_table, open_table, read_columns, writer_lock
from mhtag.inference.encoder import DEFAULT_BACKBONE, Batch, Encoder, load_encoder
from mhtag.results import Added, Deleted, Failure, IndexReport

_logger = logging.getLogger(__name__)
ENGINES = ("local", "ray")


def read_known_labels(labels: str | Path, root: Path, multilabel: list[str], enc: Encoder) -> KnownLabels:
    """A CSV `path` may be relative to the indexed folder or to the CSV's own folder; either matches."""
    heads = {a.name: a.kind for a in enc.tagger.schema.attributes} if enc.tagger else {}
    wanted = set(multilabel) | {n for n, k in heads.items() if k is AttributeKind.MULTI}
    columns = set(read_csv_frame(labels).columns)
    table = read_labels(labels, None, sorted(wanted & columns), check_files=False)
    for s in table.skipped[:10]:
        _logger.warning("labels: skipped %s", s)
    kinds = {a: AttributeKind.MULTI if a in table.multilabel else AttributeKind.SINGLE for a in table.attributes}
    known = KnownLabels({}, {}, kinds)
    root = absolute(root)
    for rec in table.frame.to_dict("records"):
        rel = _relative_to_root(rec["path"], Path(rec["__file__"]), root)
        if rel is None:
            known.unmatched += 1
            continue
        known.by_rel[rel] = {a: stored_label(rec[a], kinds[a]) for a in table.attributes}
        known.splits[rel] = rec["split"]
    if not known.by_rel:
        raise MhtagError(f"{labels}: no `path` matches an image under {root} (paths may be relative to the "
                         "folder being indexed or to the CSV's folder)")
    return known


def _relative_to_root(path: str, from_csv: Path, root: Path) -> str | None:
    for candidate in (absolute(root / path), from_csv):
        if candidate.is_relative_to(root) and candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def stored_label(value: Any, kind: AttributeKind) -> str:
    if kind is AttributeKind.MULTI:  # canonical: sorted, as predictions are, so the two compare as strings
        return encode_tags(sorted(set(split_tags(value))))
    return "" if is_blank(value) else str(value).strip()


def _build_meta(enc: Encoder, known: KnownLabels | None, old: IndexMeta | None, root: Path) -> IndexMeta:
    attrs: dict[str, StoredAttribute] = {}
    if enc.tagger:
        for a in enc.tagger.schema.attributes:
            attrs[a.name] = StoredAttribute(a.name, a.kind, list(a.classes), has_head=True)
    previous = {a.name: a for a in old.attributes} if old else {}
    # labels the index holds stay, whatever this run's CSV names; its new columns are added
    label_kinds = {n: a.kind for n, a in previous.items() if a.has_labels} | (known.kinds if known else {})
    for name, kind in label_kinds.items():
        a = attrs.setdefault(name, StoredAttribute(name, kind))
        a.has_labels = True
        seen = set(previous[name].label_values) if name in previous else set()
        if known:
            for row in known.by_rel.values():
                value = row.get(name, "")
                seen.update(split_tags(value) if a.multi else [value] if value else [])
        a.label_values = sorted(seen)
    check_distinct_columns(list(attrs), "index")
    return IndexMeta(enc.model_id, enc.model_path, enc.backbone, enc.dim, enc.data_config,
                     enc.tagger.schema.version if enc.tagger else None, list(attrs.values()),
                     old.root if old and old.root else str(absolute(root)),
                     dict(old.fusion) if old else {}, old.fusion_k if old else 20,
                     dict(old.fusion_tau) if old else {})


# ---------------------------------------------------------------- plan


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_plan(table, root: Path, meta: IndexMeta, known: KnownLabels | None, verify: bool = False,
              only: set[str] | None = None) -> Plan:
    """Compare the walk of `root` with the table's rows from `root` (other folders' rows are left alone);
    with `only`, just those relative paths (and nothing counts as vanished)."""
    walk = walk_images([root])
    files = {f.relative_to(root).as_posix(): f for f in walk.files}
    plan = Plan(files if only is None else {rel: f for rel, f in files.items() if rel in only})
    plan.problems = [Failure(path=path, reason=reason) for path, reason in walk.problems]
    label_cols = [a.label for a in meta.attributes if a.has_labels and a.label in table.schema.names]
    prefix = str(absolute(root)).rstrip("/") + "/"
    existing = read_columns(table, ["rid", "id", "rel", "path", "size", "mtime_ns", "split", *label_cols]
                            ).to_pylist()
    by_rel = {r["rel"]: r for r in existing if r["path"].startswith(prefix)}
    for rel, path in plan.files.items():
        old = by_rel.get(rel)
        same, fresh = (False, None) if old is None else _compare(old, path, meta, known, rel, verify)
        if not same:
            plan.todo.append(rel)
            plan.columns[rel] = label_columns(rel, meta, known, old)
            if old is not None:
                plan.changed.append(old["rid"])
        elif fresh:
            plan.refreshed.append({"rid": old["rid"], **fresh})
        else:
            plan.unchanged += 1
    if only is None:
        plan.vanished = [r["rid"] for rel, r in by_rel.items() if rel not in plan.files]
    return plan


def _compare(old: dict[str, Any], path: Path, meta: IndexMeta, known: KnownLabels | None, rel: str,
             verify: bool) -> tuple[bool, dict[str, Any] | None]:
    """Whether the file holds the indexed bytes, and if so the columns that moved without them (a new mtime
    after a copy or a re-mount, new known labels), or None. A new mtime is checked against the content hash."""
    st = path.stat()
    if old["size"] != st.st_size:
        return False, None
    touched = old["mtime_ns"] != st.st_mtime_ns
    if (touched or verify) and _sha1_file(path) != old["id"]:
        return False, None
    kept = {k: v for k, v in old.items() if k == "split" or k.startswith("label_")}
    now = {"mtime_ns": st.st_mtime_ns, **kept, **(known.given(rel, meta) if known is not None else {})}
    return True, now if any(old.get(k) != v for k, v in now.items()) else None


def _refresh(table, rows: list[dict[str, Any]]) -> None:
    """Update the moved columns of rows whose bytes did not change, in one commit."""
    if rows:
        schema = pa.schema([table.schema.field(name) for name in rows[0]])
        table.merge_insert("rid").when_matched_update_all().execute(pa.Table.from_pylist(rows, schema=schema))


def _delete(table, rids: list[int], chunk: int = 2000) -> None:
    for i in range(0, len(rids), chunk):
        table.delete(col("rid").isin(rids[i:i + chunk]))


# ---------------------------------------------------------------- write


def write_shard(table, plan: Plan, todo: list[str], meta: IndexMeta, enc: Encoder, known: KnownLabels | None,
                batch_size: int, commit_every: int, workers: int | None, progress: bool) -> Written:
    """Embed `todo` (this process's share of the plan) and append its rows in atomic batches."""
    paths = [str(plan.files[rel]) for rel in todo]
    schema = arrow_schema(meta.dim, meta.attributes)
    changed = {rid_for(str(absolute(plan.files[rel]))) for rel in todo} & set(plan.changed)
    thresholds = enc.tagger.thresholds_ if enc.tagger else {}
    written, buffer = Written(), []

    def commit() -> None:
        table.add(pa.Table.from_pylist(buffer, schema=schema))  # one atomic LanceDB commit
        for row in buffer:
            written.rids.append(row["rid"])
            if row["rid"] in changed:
                written.changed += 1
            else:
                written.new += 1
        buffer.clear()

    batch: Batch
    for batch in enc.encode_files(paths, batch_size, workers, progress, "indexing"):
        written.failed += [Failure(path=paths[i], reason=reason) for i, reason in batch.failed]
        buffer += [row_of(todo[i], plan.files[todo[i]], batch.facts[r], batch.embeddings[r], batch.probs, r, meta,
                          thresholds, plan.columns[todo[i]]) for r, i in enumerate(batch.ok)]
        if len(buffer) >= commit_every:
            commit()
    if buffer:
        commit()
    return written


def _gather(written: Written, dist: DistInfo) -> Written:
    """Every process's counts and failures, summed (a no-op in one process)."""
    if not dist.enabled:
        return written
    import torch.distributed

    parts: list[Written | None] = [None] * dist.world_size
    torch.distributed.all_gather_object(parts, written)
    return Written(sum(p.new for p in parts), sum(p.changed for p in parts),
                   [f for p in parts for f in p.failed], [r for p in parts for r in p.rids])


def _broadcast(plan: Plan | None) -> Plan:
    import torch.distributed

    holder = [plan]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


# ---------------------------------------------------------------- the run


@guard_index
def index_images(root: str | Path, db: str | Path = DEFAULT_DB, model: str | Path | None = None,
                 labels: str | Path | None = None, multilabel: list[str] | tuple = (), rebuild: bool = False,
                 prune: bool = False, batch_size: int = 64, commit_every: int = 512, workers: int | None = None,
                 progress: bool = False, verify: bool = False, engine: str = "local") -> IndexReport:
    """Index every image under `root` into the LanceDB table at `db` (see the module docstring). `engine`:
    "local" (this process, or one shard per torchrun process) or "ray" (Ray Data; see `index.raydata`)."""
    root, db = Path(root), location(db)
    if not root.is_dir():
        raise MhtagError(f"{root} is not a folder of images")
    old = read_meta(db)
    if model is None and old is not None and not rebuild:
        model = old.model_path
    enc = load_encoder(model, old.backbone if old and not rebuild and not model else DEFAULT_BACKBONE)
    known = read_known_labels(labels, root, list(multilabel), enc) if labels else None
    report = build_index(root, db, enc, known, rebuild=rebuild, prune=prune, batch_size=batch_size,
                         commit_every=commit_every, workers=workers, progress=progress, verify=verify,
                         engine=engine)
    if known is not None and known.unmatched:
        _logger.warning("%d row(s) of %s match no image under %s", known.unmatched, labels, root)
    return report


@guard_index
def build_index(root: Path, db: Path, enc: Encoder, known: KnownLabels | None, rebuild: bool = False,
                prune: bool = False, batch_size: int = 64, commit_every: int = 512, workers: int | None = None,
                progress: bool = False, verify: bool = False, tune_fusion: bool = True,
                only: set[str] | None = None, engine: str = "local") -> IndexReport:
    """Plan, shard, write and report, for an encoder already loaded (the server keeps one)."""
    t0 = time.monotonic()
    if engine not in ENGINES:
        raise MhtagError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    dist = init_distributed()
    if engine == "ray" and dist.enabled:
        raise MhtagError("--engine ray spreads the work itself; run it without torchrun")
    old = None if rebuild else read_meta(db)
    meta = _build_meta(enc, known, old, root)
    report = IndexReport(db=str(db), has_heads=enc.tagger is not None,
                         unmatched_labels=known.unmatched if known else 0)
    with writer_lock(db) if dist.is_main else nullcontext():
        if dist.is_main:
            if old is not None:
                check_compatible(old, enc, db)
                _check_label_columns(old, meta, db)
            if rebuild:
                drop_table(db)
            write_meta(db, meta)
            table = open_table(db, meta, create=True)
            _add_label_columns(table, meta)
            plan = make_plan(table, root, meta, known, verify, only)
            _delete(table, plan.changed)
            _refresh(table, plan.refreshed)
            if prune:
                _delete(table, plan.vanished)
        if dist.enabled:  # every process takes its shard of rank 0's plan
            plan = _broadcast(plan if dist.is_main else None)
            table = table if dist.is_main else open_table(db)
        if engine == "ray":
            from mhtag.index.raydata import write_with_ray

            written = write_with_ray(db, plan, meta, batch_size, commit_every, progress=progress)
        else:
            written = write_shard(table, plan, plan.todo[dist.rank::dist.world_size], meta, enc, known, batch_size,
                                  commit_every, workers, progress and dist.is_main)
            written = _gather(written, dist)
    report.added, report.updated, report.ids = written.new, written.changed, written.rids
    report.failed = plan.problems + written.failed
    report.unchanged, report.refreshed = plan.unchanged, len(plan.refreshed)
    report.pruned = len(plan.vanished) if prune else 0
    report.vanished = 0 if prune else len(plan.vanished)
    if dist.is_main and tune_fusion and known is not None and enc.tagger is not None:
        report.fusion, report.fusion_tau = calibrate_fusion(db)
    report.rows = open_table(db).count_rows()
    report.seconds = time.monotonic() - t0
    return report


def _check_label_columns(old: IndexMeta, new: IndexMeta, db: Path) -> None:
    """A label column keeps its kind: tags stay tags, single labels single."""
    was = {a.name: a.kind for a in old.attributes if a.has_labels}
    for a in new.attributes:
        if a.has_labels and a.name in was and was[a.name] is not a.kind:
            raise MhtagError(f"index {db} holds {a.name} labels as {was[a.name]}-label; these labels make it "
                             f"{a.kind}-label. Keep its kind (--multilabel), or --rebuild")


def _add_label_columns(table, meta: IndexMeta) -> None:
    """Label columns that the table lacks (labels given for the first time to an index), added empty."""
    missing = [a.label for a in meta.attributes if a.has_labels and a.label not in table.schema.names]
    if missing:
        table.add_columns(pa.schema([pa.field(name, pa.string()) for name in missing]))
        table.update(values={name: "" for name in missing})


# ---------------------------------------------------------------- the service's writes

UPLOADS = "uploads"  # folder inside the index where uploaded images are kept
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@guard_index
def add_images(db: str | Path, images: list[bytes], enc: Encoder, labels: list[dict[str, Any]] | None = None,
               add_values: bool = False) -> Added:
    """Store uploaded images under the index's own folder (named by content, so the same image twice is one
    file and one row) and index them like `index_images` does, with optional known labels per image (checked
    by `checked_labels`: a value new to an attribute only with `add_values`)."""
    if is_remote(db):
        raise MhtagError(f"index {db} is on object storage; uploads are kept in a local index's folder. Index "
                         "the images with `mhtag index DIR --db URI` instead")
    db = Path(db)
    meta = read_meta(db)
    if meta is None:
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`")
    if labels is not None and len(labels) != len(images):
        raise MhtagError(f"{len(labels)} label set(s) for {len(images)} image(s)")
    checked = [checked_labels(meta, given, add_values) for given in labels] if labels else None
    folder = db / UPLOADS
    names = [_store_upload(folder, data, i) for i, data in enumerate(images)]
    known = _upload_labels(meta, names, checked) if checked else None
    report = build_index(folder, db, enc, known, tune_fusion=False, only=set(names))
    return Added(ids=[rid_for(str(absolute(folder / n))) for n in names], added=report.added + report.updated,
                 unchanged=report.unchanged, failed=report.failed)


def _store_upload(folder: Path, data: bytes, i: int) -> str:
    decode_image(data, f"upload {i + 1}")  # refuses what is not a usable image, before anything is written
    with Image.open(io.BytesIO(data)) as img:
        ext = _EXTENSIONS.get(img.format or "", "")
    if not ext:
        raise MhtagError(f"upload {i + 1}: this image format cannot be stored; send JPEG, PNG or WebP")
    name = hashlib.sha1(data).hexdigest() + ext
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
        path = Path(rows[0]["path"])
        if not is_remote(db) and path.parent == absolute(db / UPLOADS):
            path.unlink(missing_ok=True)
    return Deleted(id=int(rid))
