"""Every row's head answers again, from its stored features: what an index needs when its model changes but its
backbone does not (a probe retrained on corrected labels). No image is decoded where the feature store has it,
and the new answers land in one commit, so a reader sees all the old answers or all the new ones."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mhtag.core.progress import progress_bar
from mhtag.index.meta import IndexMeta
from mhtag.index.rows import head_columns
from mhtag.index.store import add_missing_columns, open_table, read_columns
from mhtag.inference.encoder import Encoder, stored_features
from mhtag.models.tagger import feature_probabilities

CHUNK = 8192  # rows whose heads run at once (a bound on memory, not a commit)


def refresh_predictions(db: Path, enc: Encoder, meta: IndexMeta, progress: bool = False) -> float:
    """Write `enc`'s head answers for every row of the table at `db` (whose meta is `meta`: `enc`'s attributes,
    written by the caller after this commit); returns the seconds it took."""
    t0 = time.monotonic()
    table = open_table(db)
    add_missing_columns(table, meta)
    rows = read_columns(table, ["rid", "id", "path"])
    if rows.num_rows == 0 or enc.tagger is None:
        return time.monotonic() - t0
    features = stored_features(enc.backbone_module, rows.column("path").to_pylist(), rows.column("id").to_pylist(),
                               progress=progress)
    thresholds = enc.tagger.thresholds_
    heads = [a for a in meta.attributes if a.has_head]
    schema = pa.schema([table.schema.field("rid")] + [table.schema.field(c) for a in heads
                                                      for c in (a.pred, a.conf, a.probs)])
    batches = []
    with progress_bar("predicting", rows.num_rows, progress) as advance:
        for start in range(0, rows.num_rows, CHUNK):
            probs = feature_probabilities(enc.tagger, np.ascontiguousarray(features[start:start + CHUNK]))
            rids = rows.column("rid").to_numpy()[start:start + CHUNK]
            batches.append(pa.Table.from_pylist([{"rid": int(rid), **head_columns(meta, probs, r, thresholds)}
                                                 for r, rid in enumerate(rids)], schema=schema))
            advance(len(rids))
    table.merge_insert("rid").when_matched_update_all().execute(pa.concat_tables(batches))
    return time.monotonic() - t0
