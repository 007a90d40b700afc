"""`mhtag make-demo-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mhtag.cli.app import app


@app.command("make-demo-data")
def make_demo_data(out: Path, n: Annotated[int, typer.Option(min=1, help="number of images")] = 1000,
                   size: Annotated[int, typer.Option(min=16, help="image side in pixels")] = 96,
                   seed: int = 0) -> None:
    """Write a synthetic dataset (shapes: colour, size, background; multi-label marks) to OUT."""
    from mhtag.data.synthetic import make_demo_data as make

    csv_path = make(out, n, size, seed)
    typer.echo(f"wrote {n} images and {csv_path} (multi-label column: marks)")
