"""`mhtag predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, Model, ZeroShotSpec, app, echo_json, example, prepare


@app.command(epilog=example("mhtag predict photo.jpg --db indexes/shop", "mhtag predict new_arrivals/ --json",
                            "mhtag predict photo.jpg --zero-shot 'pattern=striped,checked,solid' --describe"))
def predict(paths: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="images or folders")],
            db: Db = None, model: Model = None,
            k: Annotated[Optional[int], typer.Option(min=1, help="neighbours that vote (default: the k the fusion "
                                                                 "weights were tuned with)")] = None,
            min_similarity: Annotated[float, typer.Option(help="below this, neighbours answer unknown")] = 0.0,
            zero_shot: ZeroShotSpec = None,
            template: Annotated[Optional[list[str]], typer.Option(metavar="PROMPT", help="a zero-shot prompt with {} "
                                                                                         "for the value (repeatable; "
                                                                                         "several are averaged)")
                                ] = None,
            describe: Annotated[bool, typer.Option("--describe", help="the caption phrases most aligned with each "
                                                                      "image")] = False,
            as_json: AsJson = False) -> None:
    """Per attribute: the head's answer, the vote of labelled neighbours and their fusion (an indexed image also
    shows its known labels)."""
    from mhtag.core.errors import MhtagError
    from mhtag.inference.words import parse_zero_shot

    try:
        asked = [parse_zero_shot(spec) for spec in zero_shot or []]
    except MhtagError as exc:
        raise typer.BadParameter(str(exc), param_hint="--zero-shot") from exc
    if template:
        bad = [t for t in template if t.count("{}") != 1]
        if bad:
            raise typer.BadParameter(f"{bad[0]!r}: a prompt holds {{}} once, where the value goes",
                                     param_hint="--template")
        for zs in asked:
            zs.templates = tuple(template)
    prepare()
    from mhtag.index.predict import Words
    from mhtag.index.predict import predict as run_predict
    from mhtag.index.store import DEFAULT_DB
    from mhtag.report.text import predictions_text

    result = run_predict(paths, db or DEFAULT_DB, model, k, min_similarity, progress=True,
                         words=Words(asked, describe))
    if as_json:
        echo_json(result)
    else:
        typer.echo(predictions_text(result))
    if not result.predictions:
        typer.echo(f"error: none of the {len(result.failed)} input(s) could be read", err=True)
        raise typer.Exit(1)
