"""`mhtag predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, Model, app, echo_json, example, prepare


@app.command(epilog=example("mhtag predict photo.jpg --db indexes/shop", "mhtag predict new_arrivals/ --json"))
def predict(paths: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="images or folders")],
            db: Db = None, model: Model = None,
            k: Annotated[Optional[int], typer.Option(min=1, help="neighbours that vote (default: the k the fusion "
                                                                 "weights were tuned with)")] = None,
            min_similarity: Annotated[float, typer.Option(help="below this, neighbours answer unknown")] = 0.0,
            as_json: AsJson = False) -> None:
    """Per attribute: the head's answer, the vote of labelled neighbours and their fusion (an indexed image also
    shows its known labels)."""
    prepare()
    from mhtag.index.predict import predict as run_predict
    from mhtag.index.store import DEFAULT_DB
    from mhtag.report.text import predictions_text

    result = run_predict(paths, db or DEFAULT_DB, model, k, min_similarity, progress=True)
    if as_json:
        echo_json(result)
    else:
        typer.echo(predictions_text(result))
    if not result.predictions:
        typer.echo(f"error: none of the {len(result.failed)} input(s) could be read", err=True)
        raise typer.Exit(1)
