"""`mhtag index`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, Model, Multilabel, ZeroShotSpec, app, echo_json, example, is_rank0, prepare
from mhtag.report.text import shown


def _build_ann(db: str) -> str:
    from mhtag.index.ann import build_ann
    from mhtag.index.meta import require_meta

    ann = build_ann(db, require_meta(db))
    return (f"ANN: vector index {ann.vector_index}; scalar indexes on {len(ann.scalar_indexes)} columns "
            f"({ann.seconds:.1f}s)")


def _has_labels(db: str) -> bool:
    from mhtag.index.meta import require_meta

    return any(a.has_labels for a in require_meta(db).attributes)


def next_steps(db: str, labelled: bool) -> list[str]:
    """What an index without a model can do now, and how it gets attributes."""
    lines = ["no --model: the index holds the backbone's embeddings. What you can do now:",
             f"  find similar images:    mhtag search --db {db} --like photo.jpg   (or `mhtag serve --db {db}`)"]
    if labelled:
        lines.append(f"  train heads on the labels it holds:    mhtag train --db {db} --out runs/mine   "
                     f"then    mhtag index DIR --db {db} --model runs/mine")
    else:
        lines += [f"  give it labels: label some rows in the gallery (mhtag serve --db {db} --api-key-file KEY), or",
                  f"                  mhtag labels import labels.csv --db {db} --add-values [--multilabel COL]",
                  "                  (a `path` column and one column per attribute)",
                  f"  then train heads on them:    mhtag train --db {db} --out runs/mine   and index with the run"]
    return lines


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@app.command(epilog=example("mhtag index ./images --labels labels.csv --model runs/shop --db indexes/shop"))
def index(folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="folder of images, walked recursively")],
          db: Db = None, model: Model = None,
          labels: Annotated[Optional[Path], typer.Option(metavar="CSV", help="known labels; `path` relative to "
                                                                             "FOLDER or to the CSV")] = None,
          multilabel: Multilabel = None,
          rebuild: Annotated[bool, typer.Option("--rebuild", help="drop the index and embed everything again")
                             ] = False,
          prune: Annotated[bool, typer.Option("--prune", help="drop rows whose file is gone")] = False,
          verify: Annotated[bool, typer.Option("--verify", help="also compare content hashes of files whose size "
                                                                "and mtime are unchanged (reads every file)")] = False,
          batch_size: Annotated[int, typer.Option(min=1)] = 64,
          workers: Annotated[Optional[int], typer.Option(min=0, help="decoding processes (default: auto)")] = None,
          engine: Annotated[Engine, typer.Option(help="local: this process (or one shard per torchrun process); "
                                                      "ray: Ray Data, on RAY_ADDRESS's cluster or a local Ray "
                                                      "(pip install -e '.[ray]')")] = Engine.local,
          build_ann: Annotated[bool, typer.Option("--build-ann", help="then build LanceDB's vector (IVF_PQ) and "
                                                                      "scalar indexes for `search --engine lance` "
                                                                      "(refresh after bulk appends)")] = False,
          zero_shot: ZeroShotSpec = None,
          as_json: AsJson = False) -> None:
    """Embed and tag every image under FOLDER into a LanceDB index (incremental, resumable)."""
    prepare()
    from mhtag.index.build import IndexOptions, index_images
    from mhtag.index.store import DEFAULT_DB

    options = IndexOptions(rebuild=rebuild, prune=prune, verify=verify, batch_size=batch_size, workers=workers,
                           engine=engine.value, zero_shot=zero_shot or [], progress=True)
    r = index_images(folder, db or DEFAULT_DB, model, labels, multilabel or [], options)
    if not is_rank0():
        return
    ann_line = _build_ann(r.db) if build_ann else None
    if as_json:
        echo_json(r.model_copy(update={"ids": []}))
        if ann_line:
            typer.echo(ann_line, err=True)
        return
    refreshed = f"{r.refreshed} refreshed (same bytes, new mtime or labels), " if r.refreshed else ""
    typer.echo(f"{r.db}: {r.rows} rows ({r.added} new, {r.updated} re-embedded, {refreshed}{r.unchanged} "
               f"unchanged, {r.pruned} pruned) in {r.seconds:.1f}s, {r.images_per_second:.1f} images/s")
    if ann_line:
        typer.echo(ann_line)
    if not r.has_heads:
        for line in next_steps(r.db, labelled=labels is not None or _has_labels(r.db)):
            typer.echo(line)
    if r.fusion:
        typer.echo(f"fusion weights (head vs neighbours, tuned on val rows): {r.fusion}")
        typer.echo(f"neighbour vote temperatures (tuned with them): {r.fusion_tau}")
    if r.vanished:
        typer.echo(f"{r.vanished} indexed file(s) no longer exist; `--prune` drops their rows", err=True)
    if r.unmatched_labels:
        typer.echo(f"{r.unmatched_labels} row(s) of {labels} match no image under {folder}", err=True)
    for f in r.failed:
        typer.echo(f"skipped {shown(f.path)}: {f.reason}", err=True)
    if r.failed:
        typer.echo(f"{len(r.failed)} unreadable file(s) skipped", err=True)
