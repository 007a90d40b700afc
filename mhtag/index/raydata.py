"""`mhtag index DIR --engine ray`: the local engine's plan, the work on Ray Data (`pip install -e '.[ray]'`).

The driver plans exactly as the local engine does (new, changed, unchanged, gone) and deletes what must go. Ray
Data then does the work: the files to embed as a dataset, `map_batches` over a pool of actors that each load the
model once (one GPU per actor where the cluster has GPUs), decode, embed, run the heads, and write their rows as
Lance fragments with Lance's own distributed writer. Only the fragments' metadata travels back; the driver commits
them to the table every `commit_every` rows. A killed run keeps every committed row, its uncommitted fragments are
never referenced, and the re-run's plan finds the rest: no row is lost and none lands twice.

Ray connects the Ray way: `RAY_ADDRESS` (or `ray.init("auto")` on a cluster node), else a local Ray is started.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mhtag.core.errors import MhtagError
from mhtag.core.progress import progress_bar
from mhtag.core.storage import storage_options
from mhtag.data.labels import absolute
from mhtag.index.columns import rid_for
from mhtag.index.meta import IndexMeta
from mhtag.index.rows import Plan, Written, row_of
from mhtag.index.store import table_uri
from mhtag.inference.encoder import load_encoder
from mhtag.results import Failure

_logger = logging.getLogger(__name__)


def require_ray():
    try:
        import lance  # noqa: F401  (pylance: the fragment writer)
        import ray
    except ImportError as exc:
        raise MhtagError(f"--engine ray needs the ray extra: pip install -e '.[ray]' ({exc.name} is missing)") \
            from None
    return ray


def connect(num_cpus: int | None = None) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray (with `num_cpus`, default all cores)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, configure_logging=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # the terminal shows mhtag's progress, not Ray's
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)


class EmbedAndWrite:
    """A Ray Data actor: the model loads once; each batch of files becomes Lance fragments of finished rows."""

    def __init__(self, meta: dict[str, Any], columns: dict[str, dict[str, str]], uri: str, storage_version: str,
                 threads: int, storage_options: dict[str, str]):
        import torch

        torch.set_num_threads(max(1, threads))
        self.meta = IndexMeta.from_dict(meta)
        self.enc = load_encoder(self.meta.model_path, self.meta.backbone)
        self.columns, self.uri, self.storage_version = columns, uri, storage_version
        self.storage_options = storage_options or None  # passed, not read from the env: actors may run elsewhere
        self.schema = self.meta.table_schema()
        self.thresholds = self.enc.tagger.thresholds_ if self.enc.tagger else {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lance.fragment import write_fragments

        rels, paths = [str(r) for r in batch["rel"]], [str(p) for p in batch["path"]]
        rows, failed = [], []
        for b in self.enc.encode_files(paths, len(paths), workers=0):
            failed += [[paths[i], reason] for i, reason in b.failed]
            rows += [row_of(rels[i], Path(paths[i]), b.facts[r], b.embeddings[r], b.probs, r, self.meta,
                            self.thresholds, self.columns[rels[i]]) for r, i in enumerate(b.ok)]
        fragments = write_fragments(pa.Table.from_pylist(rows, schema=self.schema), self.uri, schema=self.schema,
                                    data_storage_version=self.storage_version,
                                    storage_options=self.storage_options) if rows else []
        return {"fragments": np.array([json.dumps([json.dumps(f.to_json()) for f in fragments])]),
                "rids": np.array([json.dumps([row["rid"] for row in rows])]),
                "failed": np.array([json.dumps(failed)])}


def write_with_ray(db: str | Path, plan: Plan, meta: IndexMeta, batch_size: int,
                   commit_every: int, actors: int | None = None, progress: bool = False) -> Written:
    """Embed `plan.todo` on Ray Data and commit its rows to the table at `db` (see the module docstring)."""
    import lance
    from lance.fragment import FragmentMetadata

    ray = require_ray()
    connect()
    uri, options = table_uri(db), storage_options()
    stored_as = lance.dataset(uri, storage_options=options or None).data_storage_version
    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors or max(1, int(gpus) if gpus else cpus)
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": max(1, cpus // actors)}
    items = [{"rel": rel, "path": str(plan.files[rel])} for rel in plan.todo]
    if not items:
        return Written()
    dataset = ray.data.from_items(items).map_batches(
        EmbedAndWrite, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), batch_format="numpy",
        fn_constructor_kwargs={"meta": json.loads(meta.to_json()), "columns": plan.columns, "uri": uri,
                               "storage_version": stored_as,
                               "threads": per_actor.get("num_cpus", 1), "storage_options": options}, **per_actor)
    changed = {rid_for(str(absolute(plan.files[rel]))) for rel in plan.todo} & set(plan.changed)
    written, pending, pending_rids = Written(), [], []

    def commit() -> None:
        if pending:
            lance.LanceDataset.commit(uri, lance.LanceOperation.Append(pending), storage_options=options or None,
                                      read_version=lance.dataset(uri, storage_options=options or None).version)
        for rid in pending_rids:
            written.rids.append(rid)
            written.changed += rid in changed
            written.new += rid not in changed
        pending.clear()
        pending_rids.clear()

    with progress_bar("indexing (ray)", len(items), progress) as advance:
        for out in dataset.iter_rows():
            pending += [FragmentMetadata.from_json(f) for f in json.loads(out["fragments"])]
            rids, failed = json.loads(out["rids"]), json.loads(out["failed"])
            pending_rids += rids
            written.failed += [Failure(path=p, reason=r) for p, r in failed]
            advance(len(rids) + len(failed))
            if len(pending_rids) >= commit_every:
                commit()
        commit()
    return written
