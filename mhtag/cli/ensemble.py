"""`mhtag ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Images, Labels, app, echo_json, example, prepare


@app.command(epilog=example("mhtag ensemble runs/a runs/b runs/c --labels shop/labels.csv --out runs/abc"))
def ensemble(runs: Annotated[list[Path], typer.Argument(
                 metavar="RUN...", help="two or more run folders (or checkpoints) trained on the same labels at the "
                                        "same input size")],
             labels: Labels, images: Images = None,
             out: Annotated[Path, typer.Option(help="folder of the ensemble's checkpoint")] = Path("runs/ensemble"),
             tta_flip: Annotated[Optional[bool], typer.Option(
                 "--tta-flip/--no-tta-flip", help="every member also embeds the mirror image and averages "
                 "(default: as the members were trained)")] = None,
             as_json: AsJson = False) -> None:
    """Combine trained runs into one model: the mean of their calibrated answers, recalibrated on the validation
    split. Use its folder as --model anywhere (predict, index, eval, audit, serve)."""
    prepare()
    from mhtag.report.text import model_comparison_table
    from mhtag.training.ensemble import build_ensemble

    result = build_ensemble(runs, labels, images, out, progress=True, tta_flip=tta_flip)
    if as_json:
        echo_json(result)
        return
    typer.echo(f"{result['val_rows']} validation rows; the ensemble beside its members:")
    typer.echo(model_comparison_table(result["val"]))
    typer.echo(f"ensemble: {result['out']}")
