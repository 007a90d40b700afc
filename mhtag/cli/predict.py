"""`mhtag predict`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, app, echo_json, prepare


@app.command()
def predict(paths: Annotated[list[Path], typer.Argument(help="images or folders")], db: Db = None,
            model: Annotated[Optional[Path], typer.Option(help="trained run (default: the index's model)")] = None,
            k: Annotated[Optional[int], typer.Option(min=1, help="neighbours that vote (default: the k the fusion "
                                                                 "weights were tuned with)")] = None,
            min_similarity: Annotated[float, typer.Option(help="below this, neighbours answer unknown")] = 0.0,
            as_json: AsJson = False) -> None:
    """Head predictions, the vote of labelled neighbours, and their fusion, per attribute."""
    prepare()
    from mhtag.index.predict import predict as run_predict
    from mhtag.index.store import DEFAULT_DB
    from mhtag.report.text import predictions_text

    result = run_predict(paths, db or DEFAULT_DB, model, k, min_similarity, progress=sys.stderr.isatty())
    if as_json:
        echo_json(result)
    else:
        typer.echo(predictions_text(result))
    if not result.predictions:
        typer.echo(f"error: none of the {len(result.failed)} input(s) could be read", err=True)
        raise typer.Exit(1)
