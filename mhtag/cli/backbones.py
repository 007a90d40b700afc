"""`mhtag backbones`."""

from __future__ import annotations

import typer

from mhtag.cli.app import app


@app.command()
def backbones() -> None:
    """List registered backbones and families."""
    from mhtag.models.backbones import list_backbones

    typer.echo("\n".join(list_backbones()))
