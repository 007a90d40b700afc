"""`mhtag make-demo-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mhtag.cli.app import app, example


@app.command("make-demo-data", epilog=example("mhtag make-demo-data demo/ --n 1000"))
def make_demo_data(out: Annotated[Path, typer.Argument(metavar="FOLDER")],
                   n: Annotated[int, typer.Option(min=1, help="number of images")] = 1000,
                   size: Annotated[int, typer.Option(min=16, help="image side in pixels")] = 96,
                   seed: int = 0) -> None:
    """Write a synthetic labelled dataset (shapes: colour, size, background; multi-label marks) to FOLDER."""
    from mhtag.data.synthetic import make_demo_data as make

    csv_path = make(out, n, size, seed)
    typer.echo(f"wrote {n} images and {csv_path} (multi-label column: marks)")
