"""`mhtag export`: the index's rows, with the same filters as `mhtag search`, as CSV, Parquet or JSON Lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, SourceChoice, app, echo_json, filter_pairs, prepare


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="Filters as in `mhtag search`: --type Dress --view side, --filter NAME=VALUE, --where SQL. "
                    "Per attribute: the answer (the known label where there is one, else the prediction), "
                    "<name>_label, <name>_pred and <name>_confidence.")
def export(ctx: typer.Context,
           out: Annotated[Path, typer.Argument(help="the file to write: .csv, .parquet or .jsonl")],
           db: Db = None,
           filter_: Annotated[Optional[list[str]], typer.Option("--filter", help="NAME=VALUE, for any attribute")
                              ] = None,
           where: Annotated[Optional[str], typer.Option(help="extra SQL filter (one expression) over the index's "
                                                             "columns")] = None,
           min_confidence: Annotated[Optional[float], typer.Option(help="for predicted labels")] = None,
           source: Annotated[SourceChoice, typer.Option(help="known labels, predictions, or a label where known "
                                                             "else the prediction")] = SourceChoice.any,
           disputed: Annotated[bool, typer.Option(help="only rows whose known label and prediction differ")
                               ] = False,
           vectors: Annotated[bool, typer.Option(help="add the embeddings (Parquet and JSON Lines only)")] = False,
           fmt: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or jsonl (default: from OUT's "
                                                                       "suffix)")] = None,
           overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
           as_json: AsJson = False) -> None:
    """Write the index's rows (every attribute's answer, label, prediction and confidence) to a file."""
    prepare(torch=False)
    from mhtag.core.errors import MhtagError
    from mhtag.index.export import export_format, export_index
    from mhtag.index.store import DEFAULT_DB

    try:
        fmt = export_format(out, fmt)
    except MhtagError as exc:
        raise typer.BadParameter(str(exc), param_hint="OUT / --format") from exc
    if vectors and fmt == "csv":
        raise typer.BadParameter("vectors go in .parquet or .jsonl files, not in CSV", param_hint="--vectors")
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists; add --overwrite to replace it", param_hint="OUT")
    report = export_index(out, db or DEFAULT_DB, filter_pairs(ctx.args, filter_), where, source.value,
                          min_confidence, disputed, vectors, fmt, overwrite, progress=not as_json)
    if as_json:
        echo_json(report)
    else:
        typer.echo(f"exported {report.rows} rows ({len(report.columns)} columns) to {report.path}")
