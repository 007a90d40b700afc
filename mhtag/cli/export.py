"""`mhtag export`: the index's rows, with the same filters as `mhtag search`, as CSV, Parquet or JSON Lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, SourceChoice, app, echo_json, example, filter_pairs, prepare
from mhtag.cli.search import FILTER_HELP, Disputed, Filter, MinConfidence, Source, Where


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog=FILTER_HELP + " Per attribute: the answer (the known label where there is one, else the "
                    "prediction), <name>_label, <name>_pred and <name>_confidence; then the free-text columns.\n\n"
                    + example("mhtag export dresses.csv --articleType Dresses --source label"))
def export(ctx: typer.Context,
           out: Annotated[Path, typer.Argument(metavar="FILE", help="the file to write: .csv, .parquet or .jsonl")],
           db: Db = None, filter_: Filter = None, where: Where = None, min_confidence: MinConfidence = None,
           source: Source = SourceChoice.any, disputed: Disputed = False,
           vectors: Annotated[bool, typer.Option("--vectors", help="add the embeddings (Parquet and JSON Lines "
                                                                   "only)")] = False,
           fused: Annotated[bool, typer.Option("--fused", help="add each attribute's fused answer and its confidence "
                                                               "(head + the row's nearest labelled rows, as "
                                                               "predict gives it: a neighbour search per row)")
                            ] = False,
           fmt: Annotated[Optional[str], typer.Option("--format", help="csv, parquet or jsonl (default: from FILE's "
                                                                       "suffix)")] = None,
           overwrite: Annotated[bool, typer.Option("--overwrite", help="replace FILE if it exists")] = False,
           as_json: AsJson = False) -> None:
    """Write the index's rows (every attribute's answer, label, prediction and confidence) to a file."""
    prepare(torch=False)
    from mhtag.core.errors import MhtagError
    from mhtag.index.export import export_format, export_index
    from mhtag.index.query import Query
    from mhtag.index.store import DEFAULT_DB

    try:
        fmt = export_format(out, fmt)
    except MhtagError as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE / --format") from exc
    if vectors and fmt == "csv":
        raise typer.BadParameter("vectors go in .parquet or .jsonl files, not in CSV", param_hint="--vectors")
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists; add --overwrite to replace it", param_hint="FILE")
    query = Query(filter_pairs(ctx.args, filter_), source=source.value, min_confidence=min_confidence,
                  disputed=disputed, where=where)
    report = export_index(out, db or DEFAULT_DB, query, vectors=vectors, fused=fused, fmt=fmt, overwrite=overwrite,
                          progress=not as_json)
    if as_json:
        echo_json(report)
    else:
        typer.echo(f"exported {report.rows} rows ({len(report.columns)} columns) to {report.path}")
