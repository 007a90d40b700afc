"""Heads retrained from the catalogue: the index's current known labels are the training table and its rows'
features come from the feature store by content hash, so no image is decoded again; then every row's answers are
refreshed with the new heads and the index switches to the new model (the predictions in one commit, then the
meta, so a reader sees the old state or the new one)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from mhtag.core.config import TrainConfig, config_from_dict, saved_config
from mhtag.core.errors import MhtagError
from mhtag.core.storage import is_remote, location
from mhtag.data.labels import FILE, ROW, SHA1, LabelTable
from mhtag.data.schema import decode_tags, join_tags
from mhtag.index.build import index_meta
from mhtag.index.columns import text_column
from mhtag.index.guard import guard_index
from mhtag.index.meta import IndexMeta, require_meta, write_meta
from mhtag.index.refresh import refresh_predictions
from mhtag.index.store import open_table, read_columns, writer_lock
from mhtag.inference.encoder import load_encoder
from mhtag.models.checkpoint import load_checkpoint
from mhtag.results import RetrainReport
from mhtag.training.fit import Run, fit

_logger = logging.getLogger(__name__)
MODELS = "models"  # where an index keeps the models retrained from it
REFRESH_WAIT_S = 60.0  # how long the switch to a new model waits for an edit or an index run to finish
# A probe converges in optimizer steps, not epochs: fashion12k's 40 epochs are 800 steps (best val epoch 26), while
# 40 epochs of a 100k-row catalogue are 7,000 steps and 100 s. Early stopping was no substitute: patience 3 stopped
# fashion12k at epoch 7 (val macro-F1 .572 against .643), patience 5 saved 10% of the time.
RETRAIN_MAX_STEPS = 1000


@guard_index
def catalogue_table(db: str | Path, multilabel: list[str] | tuple = ()) -> LabelTable:
    """The index's rows with at least one known label, as a training table: a column per labelled attribute (tags
    as `a|b`), the rows' own splits, and each row's content hash (so the probe's features come from the store).
    Every row was checked when it was indexed; nothing is read here but the table. `multilabel` names attributes
    to read as tag groups beside those the index holds as such."""
    db = location(db)
    meta = require_meta(db)
    labelled = [a for a in meta.attributes if a.has_labels]
    if not labelled:
        raise MhtagError(f"index {db} holds no known labels yet: label some rows in the gallery (`mhtag serve`), "
                         f"or apply a CSV with `mhtag labels import CSV --db {db}`, then train")
    unknown = sorted(set(multilabel) - {a.name for a in labelled})
    if unknown:
        raise MhtagError(f"--multilabel names {', '.join(unknown)}, which index {db} holds no labels for")
    columns = ["rid", "rel", "path", "split", "id", *[a.label for a in labelled],
               *[text_column(t) for t in meta.text_columns]]
    rows = read_columns(open_table(db), columns).to_pandas()
    rows = rows[rows[[a.label for a in labelled]].ne("").any(axis=1)].reset_index(drop=True)
    frame = pd.DataFrame({"path": rows["rel"], "split": rows["split"], FILE: rows["path"], ROW: rows["rid"],
                          SHA1: rows["id"]})
    for a in labelled:
        frame[a.name] = rows[a.label].map(lambda v: join_tags(decode_tags(v))) if a.multi else rows[a.label]
    for t in meta.text_columns:
        frame[t] = rows[text_column(t)]
    multi = {a.name for a in labelled if a.multi} | set(multilabel)
    return LabelTable(frame, [a.name for a in labelled], multi, list(meta.text_columns), [],
                      Path(meta.root or db), source=f"index {db}")


def same_space_config(meta: IndexMeta, overrides: dict | None = None) -> TrainConfig:
    """A probe config on the index's own backbone and preprocessing: the index's model's saved config where it has
    one, else its bare backbone; `overrides` on top."""
    if meta.model_path:
        base = saved_config(load_checkpoint(meta.model_path)["config"])
        base = config_from_dict({"mode": "probe", "teacher": None}, base)
    else:
        base = config_from_dict({"backbone": meta.backbone, "mode": "probe",
                                 "image_size": list(meta.data_config["input_size"])})
    return config_from_dict(overrides or {}, base)


@guard_index
def retrain(db: str | Path, overrides: dict | None = None, progress: bool = False,
            phase: Callable[[str], None] = lambda name: None) -> RetrainReport:
    """Train probe heads on the catalogue's current labels (the index's backbone and settings; `overrides` are
    config keys), save them in the index's `models/` folder, refresh every row's answers and switch the index to
    them. Labels changed meanwhile are kept, and counted as changed since the model was trained. `phase` is told
    each step's name as it starts ("training", "refreshing")."""
    db = location(db)
    if is_remote(db):
        raise MhtagError(f"index {db} is on object storage; retrain from a local copy")
    t0 = time.monotonic()
    meta = require_meta(db)
    trained_on = meta.labels_applied
    cfg = same_space_config(meta, overrides)
    if cfg.resolved_mode(cuda=False) != "probe":
        raise MhtagError("retraining from the catalogue trains probe heads (mode probe); train a fine-tune with "
                         f"`mhtag train --db {db} --mode finetune` and index with it (--rebuild)")
    out = Path(db) / MODELS / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    table = catalogue_table(db)
    if "probe_epochs" not in (overrides or {}):
        cfg = replace(cfg, probe_epochs=epochs_within_budget(cfg.probe_epochs, table))
    phase("training")
    run = fit(config_from_dict({"report": False}, cfg), table, out=out, progress=progress)
    trained = time.monotonic() - t0
    phase("refreshing")
    rows = switch_model(db, run, trained_on, progress)
    return RetrainReport(db=str(db), model=str(run.dir), labelled_rows=len(table.frame), changes_included=trained_on,
                         train_seconds=round(trained, 2), refresh_seconds=round(time.monotonic() - t0 - trained, 2),
                         rows_refreshed=rows, val_metrics=run.val_metrics or {})


def epochs_within_budget(epochs: int, table: LabelTable) -> int:
    """`epochs`, or fewer where they would pass RETRAIN_MAX_STEPS optimizer steps over the table's train rows."""
    from mhtag.training.batches import PROBE_BATCH

    steps_per_epoch = max(1, -(-int((table.frame["split"] == "train").sum()) // PROBE_BATCH))
    return max(1, min(epochs, RETRAIN_MAX_STEPS // steps_per_epoch))


def switch_model(db: Path, run: Run, trained_on: int, progress: bool = False) -> int:
    """Refresh every row with `run`'s heads (one commit), then point the meta at it (written last)."""
    enc = load_encoder(run.dir)
    with writer_lock(db, wait=REFRESH_WAIT_S):
        meta = require_meta(db)
        if meta.space is not None and enc.space != meta.space:
            raise MhtagError(f"{run.dir} embeds differently from index {db} (another backbone or preprocessing); "
                             f"index with it: `mhtag index DIR --db {db} --model {run.dir} --rebuild`")
        new = replace(index_meta(enc, None, meta, Path(meta.root or db)), model_labels=trained_on)
        refresh_predictions(db, enc, new, progress)
        write_meta(db, new)
    return open_table(db).count_rows()
