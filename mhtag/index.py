"""`index_images(DIR)`: embed every image under DIR, run the heads, and store one row per image.

Incremental and crash-safe: rows are committed in batches (each LanceDB append is atomic), a rerun skips
files whose size and mtime are unchanged, re-embeds changed ones and, with `prune`, drops rows of deleted
files. Under torchrun each process embeds its shard of the files and appends to the same table.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from lancedb.expr import col
from PIL import Image

from mhtag.data import absolute, hash_split, read_labels, split_tags
from mhtag.errors import MhtagError
from mhtag.predict import (
    DEFAULT_BACKBONE,
    Encoder,
    calibrate_fusion,
    check_compatible,
    encode_files,
    image_files,
    load_encoder,
)
from mhtag.runtime import init_distributed
from mhtag.store import (
    DEFAULT_DB,
    IndexMeta,
    StoredAttribute,
    arrow_schema,
    column_suffix,
    drop_table,
    encode_tags,
    open_table,
    read_columns,
    read_meta,
    rid_for,
    write_meta,
    writer_lock,
)

_logger = logging.getLogger(__name__)


@dataclass
class IndexReport:
    db: str
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    pruned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    has_heads: bool = False
    fusion: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.added + self.updated) / self.seconds if self.seconds else 0.0


@dataclass
class KnownLabels:
    """Known labels from a CSV, keyed by the image's path relative to the indexed folder."""

    by_rel: dict[str, dict[str, str]]
    splits: dict[str, str]
    kinds: dict[str, str]


def _known_labels(labels: Path, root: Path, multilabel: list[str], enc: Encoder) -> KnownLabels:
    """A CSV `path` may be relative to the indexed folder or to the CSV's own folder; either matches."""
    heads = {a.name: a.kind for a in enc.tagger.schema.attributes} if enc.tagger else {}
    multilabel = sorted(set(multilabel) | {n for n, k in heads.items() if k == "multi"})
    table = read_labels(labels, None, [m for m in multilabel if m in _csv_columns(labels)], check_files=False)
    for s in table.skipped[:10]:
        _logger.warning("labels: skipped %s", s)
    kinds = {a: ("multi" if a in table.multilabel else "single") for a in table.attributes}
    by_rel, splits = {}, {}
    root = absolute(root)
    for rec in table.frame.to_dict("records"):
        rel = _relative_to_root(rec["path"], Path(rec["file"]), root)
        if rel is None:
            continue
        by_rel[rel] = {a: _label_cell(rec[a], kinds[a]) for a in table.attributes}
        splits[rel] = rec["split"]
    if not by_rel:
        raise MhtagError(f"{labels}: no `path` matches an image under {root} (paths may be relative to the "
                         "folder being indexed or to the CSV's folder)")
    return KnownLabels(by_rel, splits, kinds)


def _relative_to_root(path: str, from_csv: Path, root: Path) -> str | None:
    for candidate in (absolute(root / path), from_csv):
        if candidate.is_relative_to(root) and (candidate.exists() or candidate == from_csv):
            return candidate.relative_to(root).as_posix()
    return None


def _csv_columns(path: Path) -> set[str]:
    return {str(c).strip() for c in pd.read_csv(path, nrows=0).columns}


def _label_cell(value: Any, kind: str) -> str:
    if kind == "multi":
        return encode_tags(split_tags(value))
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def _build_meta(enc: Encoder, known: KnownLabels | None, old: IndexMeta | None, root: Path) -> IndexMeta:
    attrs: dict[str, StoredAttribute] = {}
    if enc.tagger:
        for a in enc.tagger.schema.attributes:
            attrs[a.name] = StoredAttribute(a.name, a.kind, column_suffix(a.name), list(a.classes), has_head=True)
    previous = {a.name: a for a in old.attributes} if old else {}
    label_kinds = known.kinds if known else {n: a.kind for n, a in previous.items() if a.has_labels}
    for name, kind in label_kinds.items():
        a = attrs.setdefault(name, StoredAttribute(name, kind, column_suffix(name)))
        a.has_labels = True
        seen = set(previous[name].label_values) if name in previous else set()
        if known:
            for row in known.by_rel.values():
                seen.update(split_tags(row[name]) if kind == "multi" else [row[name]] if row[name] else [])
        a.label_values = sorted(seen)
    columns = [a.column for a in attrs.values()]
    if len(set(columns)) != len(columns):
        raise MhtagError(f"attribute names {sorted(attrs)} collide once made column-safe; rename one")
    return IndexMeta(enc.model_id, enc.model_path, enc.backbone, enc.dim, enc.data_config,
                     enc.tagger.schema.version if enc.tagger else None, list(attrs.values()), str(absolute(root)),
                     dict(old.fusion) if old else {})


def _walk(root: Path) -> dict[str, Path]:
    return {f.relative_to(root).as_posix(): f for f in image_files([root]) if not f.name.startswith(".")}


def _row(rel: str, path: Path, vec: np.ndarray, probs: dict[str, np.ndarray], row: int, meta: IndexMeta,
         enc: Encoder, known: KnownLabels | None) -> dict[str, Any]:
    st = path.stat()
    data = path.read_bytes()
    with Image.open(path) as im:
        width, height = im.size
    out: dict[str, Any] = {"rid": rid_for(rel), "id": hashlib.sha1(data).hexdigest(), "path": str(absolute(path)),
                           "rel": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "width": width,
                           "height": height, "vector": vec, "split": (known.splits.get(rel) if known else None)
                           or hash_split(rel)}
    thresholds = enc.tagger.thresholds_ if enc.tagger else {}
    labels = known.by_rel.get(rel, {}) if known else {}
    for a in meta.attributes:
        if a.has_head:
            p = probs[a.name][row]
            if a.kind == "single":
                top = int(p.argmax())
                out[f"pred_{a.column}"], out[f"conf_{a.column}"] = a.classes[top], float(p[top])
            else:
                over = p >= np.asarray(thresholds[a.name])
                out[f"pred_{a.column}"] = encode_tags([c for c, o in zip(a.classes, over, strict=True) if o])
                out[f"conf_{a.column}"] = float(p[over].min()) if over.any() else 0.0
            out[f"probs_{a.column}"] = p.astype(np.float32)
        if a.has_labels:
            out[f"label_{a.column}"] = labels.get(a.name, "")
    return out


def _label_columns(meta: IndexMeta) -> list[str]:
    return [f"label_{a.column}" for a in meta.attributes if a.has_labels]


def _plan(table, files: dict[str, Path], meta: IndexMeta, known: KnownLabels | None
          ) -> tuple[list[str], list[int], list[int], int]:
    """-> (rel paths to embed, rids to delete first (changed), rids of vanished files, unchanged count)."""
    label_cols = _label_columns(meta) if known else []
    existing = read_columns(table, ["rid", "rel", "size", "mtime_ns", *label_cols]).to_pylist()
    by_rel = {r["rel"]: r for r in existing}
    todo, changed, unchanged = [], [], 0
    for rel, path in files.items():
        old = by_rel.get(rel)
        if old is None:
            todo.append(rel)
            continue
        st = path.stat()
        same_labels = all(old[f"label_{a.column}"] == known.by_rel.get(rel, {}).get(a.name, "")
                          for a in meta.attributes if a.has_labels) if known else True
        if old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns and same_labels:
            unchanged += 1
        else:
            todo.append(rel)
            changed.append(old["rid"])
    vanished = [r["rid"] for rel, r in by_rel.items() if rel not in files]
    return todo, changed, vanished, unchanged


def _delete(table, rids: list[int], chunk: int = 2000) -> None:
    for i in range(0, len(rids), chunk):
        table.delete(col("rid").isin(rids[i:i + chunk]))


def index_images(root: str | Path, db: str | Path = DEFAULT_DB, model: str | Path | None = None,
                 labels: str | Path | None = None, multilabel: list[str] | tuple = (), rebuild: bool = False,
                 prune: bool = False, batch_size: int = 64, commit_every: int = 512, workers: int | None = None,
                 progress: bool = False) -> IndexReport:
    """Index every image under `root` into the LanceDB table at `db` (see the module docstring)."""
    t0 = time.monotonic()
    root, db = Path(root), Path(db)
    if not root.is_dir():
        raise MhtagError(f"{root} is not a folder of images")
    dist = init_distributed()
    old = read_meta(db)
    if model is None and old is not None and not rebuild:
        model = old.model_path
    enc = load_encoder(model, old.backbone if old and not rebuild and not model else DEFAULT_BACKBONE)
    known = _known_labels(Path(labels), root, list(multilabel), enc) if labels else None
    meta = _build_meta(enc, known, None if rebuild else old, root)
    report = IndexReport(str(db), has_heads=enc.tagger is not None)
    with writer_lock(db) if dist.is_main else nullcontext():
        if dist.is_main:
            if old is not None and not rebuild:
                check_compatible(old, enc, db)
                _check_label_columns(old, meta, db)
            if rebuild:
                drop_table(db)
            write_meta(db, meta)
            table = open_table(db, meta, create=True)
            files = _walk(root)
            todo, changed, vanished, report.unchanged = _plan(table, files, meta, known)
            _delete(table, changed)
            report.updated = len(changed)
            if prune and vanished:
                _delete(table, vanished)
                report.pruned = len(vanished)
        if dist.enabled:  # every rank plans from the same table state, then takes its shard
            _barrier()
            table, files = open_table(db), _walk(root)
            todo = _plan(table, files, meta, known)[0]
            _barrier()
            todo = todo[dist.rank::dist.world_size]
        _embed_and_write(table, files, todo, meta, enc, known, report, batch_size, commit_every, workers,
                         progress and dist.is_main)
        if dist.enabled:
            _barrier()
    report.added = max(0, report.added - report.updated)
    if dist.is_main and known is not None and enc.tagger is not None:
        report.fusion = calibrate_fusion(db)
    report.rows = open_table(db).count_rows()
    report.seconds = time.monotonic() - t0
    return report


def _barrier() -> None:
    import torch.distributed

    torch.distributed.barrier()


def _check_label_columns(old: IndexMeta, new: IndexMeta, db: Path) -> None:
    was = {a.name: a.kind for a in old.attributes if a.has_labels}
    now = {a.name: a.kind for a in new.attributes if a.has_labels}
    if was and now != was:
        raise MhtagError(f"index {db} holds known labels {was}; these labels have {now}. Use the same label "
                         "columns, or --rebuild")


def _embed_and_write(table, files: dict[str, Path], todo: list[str], meta: IndexMeta, enc: Encoder,
                     known: KnownLabels | None, report: IndexReport, batch_size: int, commit_every: int,
                     workers: int, progress: bool) -> None:
    paths = [str(files[rel]) for rel in todo]
    schema = arrow_schema(meta)
    buffer: list[dict[str, Any]] = []

    def commit() -> None:
        table.add(pa.Table.from_pylist(buffer, schema=schema))  # one atomic LanceDB commit
        report.added += len(buffer)
        buffer.clear()

    for feats, probs, ok, bad in encode_files(enc, paths, batch_size, workers, progress, "indexing"):
        report.failed += [(paths[i], reason) for i, reason in bad]
        buffer += [_row(todo[i], files[todo[i]], feats[r], probs, r, meta, enc, known) for r, i in enumerate(ok)]
        if len(buffer) >= commit_every:
            commit()
    if buffer:
        commit()
