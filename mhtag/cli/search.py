"""`mhtag search`: every attribute of the index is a filter option."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, SourceChoice, app, echo_json, example, filter_pairs, prepare

FILTER_HELP = ("Every attribute of the index is a filter: --type Dress --view side. Repeat an option to OR its values; "
               "different attributes AND. `--filter NAME=VALUE` names any attribute, also one called like an option "
               "of this command (--filter limit=low).")


class SortChoice(str, Enum):
    auto = "auto"
    similarity = "similarity"
    confidence = "confidence"
    path = "path"
    changed = "changed"


class SearchEngine(str, Enum):
    auto = "auto"
    memory = "memory"
    lance = "lance"


# Options shared with `mhtag export`: which rows.
Filter = Annotated[Optional[list[str]], typer.Option("--filter", metavar="NAME=VALUE",
                                                     help="a filter on any attribute (repeatable)")]
Where = Annotated[Optional[str], typer.Option(metavar="SQL", help="extra SQL filter (one expression) over the "
                                                                   "index's columns, ANDed with the rest")]
MinConfidence = Annotated[Optional[float], typer.Option(min=0, max=1, help="predictions below this do not pass a "
                                                                           "filter")]
Source = Annotated[SourceChoice, typer.Option(help="what a filter reads: known labels, predictions, or the label "
                                                   "where known, else the prediction")]
Disputed = Annotated[bool, typer.Option("--disputed", help="only rows whose known label and prediction differ; with "
                                                           "attribute filters, a dispute on one of those attributes")]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog=FILTER_HELP + "\n\n" + example("mhtag search --articleType Dresses --baseColour Navy --limit 12",
                                                   "mhtag search --like query.jpg --source label --sheet out.jpg"))
def search(ctx: typer.Context, db: Db = None, filter_: Filter = None, where: Where = None,
           like: Annotated[Optional[Path], typer.Option(metavar="IMAGE", help="rank by similarity to this image")
                           ] = None,
           like_id: Annotated[Optional[int], typer.Option(metavar="ROW", help="rank by similarity to this indexed "
                                                                             "row")] = None,
           text: Annotated[Optional[str], typer.Option(metavar="WORDS", help="rank by similarity to these words "
                                                                             "(the model's text tower)")] = None,
           limit: Annotated[int, typer.Option(min=1)] = 20,
           offset: Annotated[int, typer.Option(min=0, help="skip this many ranked rows")] = 0,
           sort: Annotated[SortChoice, typer.Option(help="similarity (to --like/--like-id), confidence, path, or "
                                                         "changed (the last label change, newest first); auto: "
                                                         "similarity where there is a query image, else "
                                                         "confidence")] = SortChoice.auto,
           min_confidence: MinConfidence = None, source: Source = SourceChoice.any,
           facets: Annotated[bool, typer.Option("--facets", help="count the matched rows per attribute value")
                             ] = False,
           disputed: Disputed = False,
           engine: Annotated[SearchEngine, typer.Option(help="memory: the table in RAM (FAISS); lance: LanceDB's own "
                                                              "indexes (see `mhtag index --build-ann`), for tables "
                                                              "larger than RAM; auto: lance past the memory budget")
                             ] = SearchEngine.auto,
           as_json: AsJson = False,
           sheet: Annotated[Optional[Path], typer.Option(metavar="IMAGE", help="write a contact sheet (.jpg/.png) of "
                                                                               "the results")] = None) -> None:
    """Find images by any attribute, ranked by similarity to an image or row, else by confidence."""
    prepare(torch=like is not None or text is not None)
    from mhtag.index.meta import require_meta
    from mhtag.index.query import Query
    from mhtag.index.search import search as run_search
    from mhtag.index.store import DEFAULT_DB
    from mhtag.report.sheets import check_sheet_path, contact_sheet
    from mhtag.report.text import search_text

    db = db or DEFAULT_DB
    if sheet:
        check_sheet_path(sheet)
    query = Query(filter_pairs(ctx.args, filter_), source=source.value, min_confidence=min_confidence,
                  disputed=disputed, where=where, like=like, like_id=like_id, text=text, limit=limit, offset=offset,
                  facets=facets, sort=sort.value)
    result = run_search(db, query, engine=engine.value)
    names = [a.name for a in require_meta(db).attributes]
    if as_json:
        echo_json(result)
    else:
        typer.echo(search_text(result, names))
    if sheet:
        contact_sheet(result.results, names, sheet)
        typer.echo(f"contact sheet: {sheet}", err=as_json)
