"""`index_images(DIR)`: embed every image under DIR, run the heads, and store one row per image.

The work is a plan (what is new, changed, unchanged or gone), shards of the plan (one per torchrun process),
the writes (batches of rows, each one atomic LanceDB commit) and a report. A rerun skips files whose size and
mtime are unchanged (`verify` also compares content hashes), re-embeds changed ones and, with `prune`, drops
rows of deleted files; a file with a new mtime but the same bytes (a copy, a re-mount) or new known labels
only has those columns updated. A killed run resumes with no duplicate and no lost row.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from lancedb.expr import col

from mhtag.core.errors import MhtagError
from mhtag.core.runtime import DistInfo, init_distributed
from mhtag.core.storage import location
from mhtag.data.images import file_hash, walk_images
from mhtag.data.labels import absolute, read_csv_frame, read_labels
from mhtag.data.schema import AttributeKind, check_distinct_columns, encode_tags, is_blank, split_tags
from mhtag.index.columns import StoredAttribute, rid_for, text_column
from mhtag.index.guard import guard_index
from mhtag.index.history import LabelHistory
from mhtag.index.meta import IndexMeta, read_meta, write_meta
from mhtag.index.neighbours import calibrate_fusion
from mhtag.index.predict import check_compatible
from mhtag.index.refresh import refresh_predictions
from mhtag.index.rows import KnownLabels, Plan, Written, label_columns, row_of
from mhtag.index.store import (
    DEFAULT_DB,
    add_missing_columns,
    drop_table,
    open_table,
    read_columns,
    sync_vectors,
    writer_lock,
)
from mhtag.inference.encoder import DEFAULT_BACKBONE, Batch, Encoder, load_encoder
from mhtag.results import Failure, IndexReport

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
    known = KnownLabels({}, {}, kinds, text_names=list(table.text_columns))
    root = absolute(root)
    for rec in table.frame.to_dict("records"):
        rel = _relative_to_root(rec["path"], Path(rec["__file__"]), root)
        if rel is None:
            known.unmatched += 1
            continue
        known.by_rel[rel] = {a: stored_label(rec[a], kinds[a]) for a in table.attributes}
        known.splits[rel] = rec["split"]
        known.texts[rel] = {t: "" if is_blank(rec[t]) else str(rec[t]) for t in table.text_columns}
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


def index_meta(enc: Encoder, known: KnownLabels | None, old: IndexMeta | None, root: Path) -> IndexMeta:
    """The meta of an index written with `enc` and the known labels `known`, over the index's `old` meta: the model,
    its heads' attributes and every attribute the index holds labels for (their vocabularies grown by `known`)."""
    attrs: dict[str, StoredAttribute] = {}
    if enc.tagger:
        cuts = enc.tagger.thresholds_
        for a in enc.tagger.schema.attributes:
            attrs[a.name] = StoredAttribute(a.name, a.kind, list(a.classes), has_head=True,
                                            thresholds=[float(t) for t in cuts.get(a.name, [])] if a.multi else [])
    previous = {a.name: a for a in old.attributes} if old else {}
    for name, a in previous.items():  # zero-shot attributes stay with the index, whatever heads the model has
        if a.zero_shot and name not in attrs:
            attrs[name] = copy.copy(a)
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
    texts = list(old.text_columns) if old else []
    texts += [t for t in (known.text_names if known else []) if t not in texts]
    check_distinct_columns(list(attrs), "index")
    check_distinct_columns(texts, "index (free-text columns)")
    made = {"model_id": enc.model_id, "model_path": enc.model_path, "backbone": enc.backbone, "dim": enc.dim,
            "data_config": enc.data_config, "schema_version": enc.tagger.schema.version if enc.tagger else None,
            "attributes": list(attrs.values()), "text_columns": texts, "space": enc.space}
    if old is None:
        return IndexMeta(**made, root=str(absolute(root)))
    return replace(old, **made)  # what this run does not set (fusion, the label history's counts) stays


# ---------------------------------------------------------------- plan


def make_plan(table, root: Path, files: dict[str, Path], meta: IndexMeta, known: KnownLabels | None,
              verify: bool = False, complete: bool = True, corrected: dict[int, set[str]] | None = None) -> Plan:
    """Compare `files` (rel path under `root` -> file) with the table's rows from `root` (other folders' rows are
    left alone). `complete`: `files` is the whole folder, so an indexed file missing from it has vanished.
    `corrected`: per row id, the attributes people set since, which the CSV in `known` leaves."""
    plan = Plan(dict(files))
    corrected = corrected or {}
    label_cols = [c for c in _stored_label_columns(meta) if c in table.schema.names]
    prefix = str(absolute(root)).rstrip("/") + "/"
    existing = read_columns(table, ["rid", "id", "rel", "path", "size", "mtime_ns", "split", "changed_ns",
                                    *label_cols]).to_pylist()
    by_rel = {r["rel"]: r for r in existing if r["path"].startswith(prefix)}
    for rel, path in plan.files.items():
        old = by_rel.get(rel)
        mine = corrected.get(old["rid"], set()) if old else set()
        same, fresh = (False, None) if old is None else _compare(old, path, meta, known, rel, verify, mine)
        if not same:
            plan.todo.append(rel)
            plan.columns[rel] = label_columns(rel, meta, known, old, mine)
            if old is not None:
                plan.changed.append(old["rid"])
        elif fresh:
            plan.refreshed.append({"rid": old["rid"], **fresh})
        else:
            plan.unchanged += 1
    if complete:
        plan.vanished = [r["rid"] for rel, r in by_rel.items() if rel not in plan.files]
    return plan


def _compare(old: dict[str, Any], path: Path, meta: IndexMeta, known: KnownLabels | None, rel: str,
             verify: bool, corrected: set[str]) -> tuple[bool, dict[str, Any] | None]:
    """Whether the file holds the indexed bytes, and if so the columns that moved without them (a new mtime
    after a copy or a re-mount, new known labels), or None. A new mtime is checked against the content hash."""
    st = path.stat()
    if old["size"] != st.st_size:
        return False, None
    touched = old["mtime_ns"] != st.st_mtime_ns
    if (touched or verify) and file_hash(path) != old["id"]:
        return False, None
    kept = {k: v for k, v in old.items() if k == "split" or k in _stored_label_columns(meta)}
    now = {"mtime_ns": st.st_mtime_ns, **kept, **(known.given(rel, meta, corrected) if known is not None else {})}
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


def write_shard(table, plan: Plan, todo: list[str], meta: IndexMeta, enc: Encoder, batch_size: int,
                commit_every: int, workers: int | None, progress: bool) -> Written:
    """Embed `todo` (this process's share of the plan) and append its rows in atomic batches."""
    paths = [str(plan.files[rel]) for rel in todo]
    schema = meta.table_schema()
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


@dataclass
class IndexOptions:
    """How an `index_images` run works; what it indexes comes from its arguments."""

    rebuild: bool = False  # drop the index first and embed everything again
    prune: bool = False  # drop the rows of files that are gone (else they are counted and kept)
    verify: bool = False  # also compare content hashes of files whose size and mtime are unchanged
    batch_size: int = 64
    commit_every: int = 512  # rows per atomic commit: what a killed run can lose and does again
    workers: int | None = None  # decoding processes; None: `runtime.auto_workers`
    engine: str = "local"  # local (this process, or one shard per torchrun process) | ray (`index.raydata`)
    zero_shot: list[str] = field(default_factory=list)  # attributes answered from prompts: "NAME=VALUE,VALUE,..."
    progress: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise MhtagError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")


@guard_index
def index_images(root: str | Path, db: str | Path = DEFAULT_DB, model: str | Path | None = None,
                 labels: str | Path | None = None, multilabel: list[str] | tuple = (),
                 options: IndexOptions | None = None) -> IndexReport:
    """Index every image under `root` into the LanceDB table at `db` (see the module docstring), with the trained
    run `model` (default: the index's own; without one, the default backbone's embeddings alone) and the known
    labels of the CSV `labels` (`multilabel`: its tag columns)."""
    options = options or IndexOptions()
    root, db = Path(root), location(db)
    _checked_zero_shot(options.zero_shot, db, model)
    if not root.is_dir():
        raise MhtagError(f"{root} is not a folder of images")
    old = read_meta(db)
    if model is None and old is not None and not options.rebuild:
        model = old.model_path
    enc = load_encoder(model, old.backbone if old and not options.rebuild and not model else DEFAULT_BACKBONE)
    known = read_known_labels(labels, root, list(multilabel), enc) if labels else None
    report = build_index(root, db, enc, known, options)
    if known is not None and known.unmatched:
        _logger.warning("%d row(s) of %s match no image under %s", known.unmatched, labels, root)
    return report


@guard_index
def build_index(root: Path, db: Path, enc: Encoder, known: KnownLabels | None,
                options: IndexOptions | None = None) -> IndexReport:
    """Walk `root`, plan against the table, write the plan's shards, tune fusion and report, for an encoder
    already loaded."""
    options = options or IndexOptions()
    t0 = time.monotonic()
    dist = init_distributed()
    if options.engine == "ray" and dist.enabled:
        raise MhtagError("--engine ray spreads the work itself; run it without torchrun")
    plan = None
    before = None if options.rebuild else read_meta(db)
    with index_writer(db, enc, known, root, options.rebuild, dist) as (table, meta):
        if dist.is_main:
            walk = walk_images([root])
            corrected = LabelHistory(db, meta).corrected() if known is not None else {}
            plan = make_plan(table, root, {f.relative_to(root).as_posix(): f for f in walk.files}, meta, known,
                             options.verify, corrected=corrected)
            plan.problems = [Failure(path=path, reason=reason) for path, reason in walk.problems]
            if options.prune:
                _delete(table, plan.vanished)
        plan, written = write_plan(db, table, plan, meta, enc, options, dist)
        if dist.is_main and before is not None and before.model_id != enc.model_id:  # new heads, same backbone
            refresh_predictions(db, enc, meta, options.progress)
    report = IndexReport(db=str(db), has_heads=enc.tagger is not None, unmatched_labels=known.unmatched if known else 0,
                         added=written.new, updated=written.changed, ids=written.rids,
                         failed=plan.problems + written.failed, unchanged=plan.unchanged,
                         refreshed=len(plan.refreshed), pruned=len(plan.vanished) if options.prune else 0,
                         vanished=0 if options.prune else len(plan.vanished))
    if dist.is_main and known is not None and enc.tagger is not None:
        report.fusion, report.fusion_tau = calibrate_fusion(db)
    if dist.is_main:
        from mhtag.index.zeroshot import answer_zero_shot
        from mhtag.inference.words import parse_zero_shot

        report.zero_shot = answer_zero_shot(db, [parse_zero_shot(s) for s in options.zero_shot])
    report.rows = open_table(db).count_rows()
    report.seconds = time.monotonic() - t0
    return report


def _checked_zero_shot(specs: list[str], db: Path, model: str | Path | None) -> list:
    """`--zero-shot` specs parsed and checked (the model must have a text tower) before anything is embedded."""
    if not specs:
        return []
    from mhtag.index.zeroshot import check_zero_shot
    from mhtag.models.checkpoint import checkpoint_file

    meta = read_meta(db)
    path = str(checkpoint_file(model)) if model is not None else meta.model_path if meta else None
    return check_zero_shot(specs, meta, path)


@contextmanager
def index_writer(db: Path, enc: Encoder, known: KnownLabels | None, root: Path, rebuild: bool,
                 dist: DistInfo) -> Iterator[tuple[Any, IndexMeta]]:
    """The table at `db`, held by this writer alone (rank 0 under torchrun), checked against `enc` and the known
    labels, with the meta written and the label columns these labels need added; yields (table, meta)."""
    old = None if rebuild else read_meta(db)
    meta = index_meta(enc, known, old, root)
    if not dist.is_main:
        yield None, meta
        return
    with writer_lock(db):
        if old is not None:
            check_compatible(old, enc, db)
            _check_label_columns(old, meta, db)
        if rebuild:
            drop_table(db)
        write_meta(db, meta)
        table = open_table(db, meta, create=True)
        add_missing_columns(table, meta)
        yield table, meta
        sync_vectors(db)  # the new version's vectors ready to search before the lock is let go


def write_plan(db: Path, table, plan: Plan | None, meta: IndexMeta, enc: Encoder, options: IndexOptions,
               dist: DistInfo) -> tuple[Plan, Written]:
    """Carry out rank 0's `plan`: drop the rows of changed files, refresh moved columns, then every process embeds
    its shard of the rest and appends it in atomic commits. Returns the plan (as every rank now has it) and what
    was written, summed over the processes."""
    if dist.is_main:
        _delete(table, plan.changed)
        _refresh(table, plan.refreshed)
    if dist.enabled:  # every process takes its shard of rank 0's plan
        plan = _broadcast(plan if dist.is_main else None)
        table = table if dist.is_main else open_table(db)
    if options.engine == "ray":
        from mhtag.index.raydata import write_with_ray

        return plan, write_with_ray(db, plan, meta, options.batch_size, options.commit_every,
                                    progress=options.progress)
    written = write_shard(table, plan, plan.todo[dist.rank::dist.world_size], meta, enc, options.batch_size,
                          options.commit_every, options.workers, options.progress and dist.is_main)
    return plan, _gather(written, dist)


def _check_label_columns(old: IndexMeta, new: IndexMeta, db: Path) -> None:
    """A label column keeps its kind: tags stay tags, single labels single."""
    was = {a.name: a.kind for a in old.attributes if a.has_labels}
    for a in new.attributes:
        if a.has_labels and a.name in was and was[a.name] is not a.kind:
            raise MhtagError(f"index {db} holds {a.name} labels as {was[a.name]}-label; these labels make it "
                             f"{a.kind}-label. Keep its kind (--multilabel), or --rebuild")


def _stored_label_columns(meta: IndexMeta) -> list[str]:
    """The columns a labels CSV sets: known labels and free text."""
    return [a.label for a in meta.attributes if a.has_labels] + [text_column(t) for t in meta.text_columns]


