"""`mhtag eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mhtag.cli.app import AsJson, Db, Images, Labels, Split, app, echo_json, example, prepare


@app.command("eval", epilog=example("mhtag eval --model runs/shop --labels shop/labels.csv --split test",
                                    "mhtag eval --model runs/shop --labels shop/labels.csv --shift --db indexes/shop"))
def eval_(model: Annotated[Path, typer.Option("--model", metavar="RUN", help="run folder or checkpoint")],
          labels: Labels,
          images: Images = None, split: Annotated[Split, typer.Option(help="which rows")] = Split.test,
          report: Annotated[Path | None, typer.Option(
              metavar="HTML", help="also write an HTML page: metrics and a reliability diagram per head, before and "
                                   "after calibration")] = None,
          shift: Annotated[bool, typer.Option(
              "--shift", help="instead: accuracy of head, neighbours and fused answer with the split's photos clean "
                              "and under real-world shifts (background, position and size, rotation, JPEG, "
                              "brightness, resolution); neighbours from --db")] = False,
          db: Db = None, as_json: AsJson = False) -> None:
    """Per-head metrics of a trained model on one split, with each head's ECE before and after calibration
    (or, with --shift, its robustness to real-world photos)."""
    prepare()
    if shift:
        _eval_shift(model, labels, images, split, db, as_json)
        return
    from mhtag.report.html import write_eval_report
    from mhtag.report.text import FLOOR_NOTE, metrics_table
    from mhtag.training.evaluate import evaluate

    result = evaluate(model, labels, images, split.value, progress=True)
    if report is not None:
        write_eval_report(report, result, f"mhtag eval: {model} on split {split.value!r}")
    if as_json:
        echo_json(result)
        return
    typer.echo(f"{result['n']} rows of split {split.value!r}")
    typer.echo(metrics_table(result["heads"]))
    typer.echo(FLOOR_NOTE)
    if report is not None:
        typer.echo(f"report: {report}")
    unknown = {k: v for k, v in result["unknown_labels"].items() if v}
    if unknown:
        typer.echo(f"labels unseen in training (left out of metrics): {unknown}")


def _eval_shift(model: Path, labels: Path, images: Path | None, split: Split, db: str | None,
                as_json: bool) -> None:
    from mhtag.index.robustness import evaluate_shifts
    from mhtag.index.store import DEFAULT_DB
    from mhtag.report.text import shift_table

    result = evaluate_shifts(labels, db or DEFAULT_DB, model, images, split.value, progress=True)
    if as_json:
        echo_json(result)
        return
    typer.echo(f"{result['n']} rows of split {split.value!r}: accuracy clean and under each shift")
    typer.echo(shift_table(result))
