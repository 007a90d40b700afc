"""`mhtag backbones`."""

from __future__ import annotations

import typer

from mhtag.cli.app import app, example


@app.command(epilog=example("mhtag backbones", "mhtag train --labels labels.csv --backbone efficientnet_lite2"))
def backbones() -> None:
    """List registered backbones and families."""
    from mhtag.models.backbones import list_backbones

    typer.echo("\n".join(list_backbones()))
