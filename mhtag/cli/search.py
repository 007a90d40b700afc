"""`mhtag search`: every attribute of the index is a filter option."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, SourceChoice, app, echo_json, filter_pairs, prepare


class SearchEngine(str, Enum):
    auto = "auto"
    memory = "memory"
    lance = "lance"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="Every attribute of the index is a filter: --type Dress --view side. Repeat an option to "
                    "OR its values; different attributes AND. `--filter NAME=VALUE` names any attribute, also one "
                    "called like an option of this command (--filter limit=low).")
def search(ctx: typer.Context, db: Db = None,
           filter_: Annotated[Optional[list[str]], typer.Option("--filter", help="NAME=VALUE, for any attribute")
                              ] = None,
           where: Annotated[Optional[str], typer.Option(help="extra SQL filter (one expression) over the index's "
                                                             "columns")] = None,
           like: Annotated[Optional[Path], typer.Option(help="rank by similarity to this image")] = None,
           like_id: Annotated[Optional[int], typer.Option(help="rank by similarity to this indexed row")] = None,
           limit: Annotated[int, typer.Option(min=1)] = 20,
           offset: Annotated[int, typer.Option(min=0, help="skip this many ranked rows")] = 0,
           min_confidence: Annotated[Optional[float], typer.Option(help="for predicted labels")] = None,
           source: Annotated[SourceChoice, typer.Option(help="known labels, predictions, or a label where known "
                                                             "else the prediction")] = SourceChoice.any,
           facets: Annotated[bool, typer.Option(help="count the matched rows per attribute value")] = False,
           disputed: Annotated[bool, typer.Option(help="only rows whose known label and prediction differ")
                               ] = False,
           engine: Annotated[SearchEngine, typer.Option(help="memory: the table in RAM (FAISS); lance: LanceDB's own "
                                                              "indexes (see `mhtag index --build-ann`), for tables "
                                                              "larger than RAM; auto: lance past the memory budget")
                             ] = SearchEngine.auto,
           as_json: AsJson = False,
           sheet: Annotated[Optional[Path], typer.Option(help="write a contact sheet (.jpg/.png) of the results")
                            ] = None) -> None:
    """Find images by any attribute, optionally ranked by similarity to an image."""
    prepare(torch=like is not None)
    from mhtag.index.meta import require_meta
    from mhtag.index.search import search as run_search
    from mhtag.index.store import DEFAULT_DB
    from mhtag.report.sheets import check_sheet_path, contact_sheet
    from mhtag.report.text import search_text

    db = db or DEFAULT_DB
    if sheet:
        check_sheet_path(sheet)
    result = run_search(db, filter_pairs(ctx.args, filter_), where, like, limit, min_confidence, source.value,
                        offset=offset, like_id=like_id, facets=facets, disputed=disputed, engine=engine.value)
    names = [a.name for a in require_meta(db).attributes]
    if as_json:
        echo_json(result)
    else:
        typer.echo(search_text(result, names))
    if sheet:
        contact_sheet(result.results, names, sheet)
        typer.echo(f"contact sheet: {sheet}", err=as_json)

