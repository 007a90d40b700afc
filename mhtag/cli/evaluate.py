"""`mhtag eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mhtag.cli.app import AsJson, Images, Labels, Split, app, echo_json, prepare


@app.command("eval")
def eval_(model: Annotated[Path, typer.Option("--model", help="run folder or checkpoint")], labels: Labels,
          images: Images = None, split: Annotated[Split, typer.Option(help="which rows")] = Split.test,
          as_json: AsJson = False) -> None:
    """Per-head metrics of a trained model on one split."""
    prepare()
    from mhtag.report.text import metrics_table
    from mhtag.training.evaluate import evaluate

    result = evaluate(model, labels, images, split.value, progress=sys.stderr.isatty())
    if as_json:
        echo_json(result)
        return
    typer.echo(f"{result['n']} rows of split {split.value!r}")
    typer.echo(metrics_table(result["heads"]))
    unknown = {k: v for k, v in result["unknown_labels"].items() if v}
    if unknown:
        typer.echo(f"labels unseen in training (left out of metrics): {unknown}")
