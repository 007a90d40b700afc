"""`mhtag inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Ignore, Images, Multilabel, app, echo_json, example, prepare


@app.command(epilog=example("mhtag inspect shop/labels.csv --multilabel tags"))
def inspect(labels: Annotated[Path, typer.Argument(metavar="CSV", help="labels CSV")], images: Images = None,
            multilabel: Multilabel = None, ignore: Ignore = None,
            out: Annotated[Optional[Path], typer.Option(metavar="DIR", help="also write health.json and classes.png "
                                                                            "(class counts) there")] = None,
            as_json: AsJson = False) -> None:
    """Data health before training: balance, missing values, image sizes/modes, unreadable files, duplicates."""
    prepare(torch=False)
    from mhtag.audit.health import inspect_labels
    from mhtag.core.io import atomic_write_json
    from mhtag.report.html import class_distribution_png
    from mhtag.report.text import health_text

    health = inspect_labels(labels, images, multilabel or [], ignore or [], progress=True)
    if out is not None:  # not beside the images by default: a chart there would be indexed as one of them
        atomic_write_json(out / "health.json", health)
        class_distribution_png(health, out / "classes.png")
    if as_json:
        echo_json(health)
        return
    typer.echo(health_text(health))
    if out is not None:
        typer.echo(f"\nwrote {out / 'health.json'} and {out / 'classes.png'}")
