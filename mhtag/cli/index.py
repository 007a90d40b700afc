"""`mhtag index`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, Multilabel, app, echo_json, is_rank0, prepare
from mhtag.report.text import shown


@app.command()
def index(folder: Annotated[Path, typer.Argument(help="folder of images, walked recursively")], db: Db = None,
          model: Annotated[Optional[Path], typer.Option(help="trained run (default: the index's own model)")] = None,
          labels: Annotated[Optional[Path], typer.Option(help="known labels CSV; `path` relative to FOLDER")] = None,
          multilabel: Multilabel = None,
          rebuild: Annotated[bool, typer.Option(help="drop the index and re-embed everything")] = False,
          prune: Annotated[bool, typer.Option(help="drop rows whose file is gone")] = False,
          verify: Annotated[bool, typer.Option(help="also compare content hashes of files whose size and mtime "
                                                    "are unchanged (reads every file)")] = False,
          batch_size: Annotated[int, typer.Option(min=1)] = 64,
          workers: Annotated[Optional[int], typer.Option(min=0, help="decoding processes (default: auto)")] = None,
          as_json: AsJson = False) -> None:
    """Embed and tag every image under FOLDER into a LanceDB index (incremental, resumable)."""
    prepare()
    from mhtag.index.build import index_images
    from mhtag.index.store import DEFAULT_DB

    r = index_images(folder, db or DEFAULT_DB, model, labels, multilabel or [], rebuild, prune, batch_size,
                     workers=workers, progress=sys.stderr.isatty(), verify=verify)
    if not is_rank0():
        return
    if as_json:
        echo_json(r.model_copy(update={"ids": []}))
        return
    typer.echo(f"{r.db}: {r.rows} rows ({r.added} new, {r.updated} re-embedded, {r.unchanged} unchanged, "
               f"{r.pruned} pruned) in {r.seconds:.1f}s, {r.images_per_second:.1f} images/s")
    if not r.has_heads:
        typer.echo("no --model: embeddings only (similarity search and known labels work; heads are absent)")
    if r.fusion:
        typer.echo(f"fusion weights (head vs neighbours, tuned on val rows): {r.fusion}")
    if r.vanished:
        typer.echo(f"{r.vanished} indexed file(s) no longer exist; `--prune` drops their rows", err=True)
    if r.unmatched_labels:
        typer.echo(f"{r.unmatched_labels} row(s) of {labels} match no image under {folder}", err=True)
    for f in r.failed:
        typer.echo(f"skipped {shown(f.path)}: {f.reason}", err=True)
    if r.failed:
        typer.echo(f"{len(r.failed)} unreadable file(s) skipped", err=True)
