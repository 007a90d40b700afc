"""`mhtag labels`: the catalogue's known labels, exported, imported, their history, and undo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Db, Multilabel, app, echo_json, example

labels_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The catalogue's known labels: export, import corrections, history, undo.")
app.add_typer(labels_app, name="labels")
AddValues = Annotated[bool, typer.Option("--add-values", help="accept values (and attributes) the index never had")]


@labels_app.command("export", epilog=example("mhtag labels export labels.csv --db indexes/shop"))
def export_labels(out: Annotated[Path, typer.Argument(metavar="CSV", help="the labels CSV to write")], db: Db = None,
                  as_json: AsJson = False) -> None:
    """Write the catalogue's current labels as a labels CSV (`path` under the indexed folder)."""
    from mhtag.catalogue.edits import export_labels as export
    from mhtag.index.meta import require_meta
    from mhtag.index.store import DEFAULT_DB

    db = db or DEFAULT_DB
    report = export(db, out)
    if as_json:
        echo_json(report)
        return
    typer.echo(f"wrote the labels of {report.rows} rows to {report.path}; train on it with `mhtag train --labels "
               f"{report.path} --images {require_meta(db).root}`, or straight from the index: `mhtag train --db {db}`")


@labels_app.command("import", epilog=example("mhtag labels import fixes.csv --db indexes/shop"))
def import_labels(csv: Annotated[Path, typer.Argument(metavar="CSV", help="path + one column per attribute; a "
                                                                            "blank cell leaves the label")],
                  db: Db = None, add_values: AddValues = False, multilabel: Multilabel = None,
                  as_json: AsJson = False) -> None:
    """Apply a file of label corrections to the catalogue (rows by path), each recorded in its history."""
    from mhtag.catalogue.edits import import_labels as apply
    from mhtag.index.store import DEFAULT_DB

    report = apply(db or DEFAULT_DB, csv, add_values, multilabel or [])
    if as_json:
        echo_json(report)
        return
    typer.echo(f"{report.changes} label(s) changed on {report.applied_rows} of {report.rows} row(s)")
    for line in report.skipped:
        typer.echo(f"not applied: {line}", err=True)


@labels_app.command("history", epilog=example("mhtag labels history --db indexes/shop --row 123456789"))
def history(db: Db = None, row: Annotated[Optional[int], typer.Option(metavar="ROW", help="one row's changes")] = None,
            as_json: AsJson = False) -> None:
    """Every recorded label change (or one row's), oldest first: when, where from, old -> new."""
    from mhtag.catalogue.edits import label_history
    from mhtag.index.history import shown
    from mhtag.index.meta import require_meta
    from mhtag.index.store import DEFAULT_DB

    db = db or DEFAULT_DB
    multi = {a.name for a in require_meta(db).attributes if a.multi}
    changes = [shown(c, c.attribute in multi) for c in label_history(db, row)]
    if as_json:
        echo_json([c.model_dump(mode="json") for c in changes])
        return
    for c in changes:
        typer.echo(f"{c.id:>6}  {c.at}  {c.source:<7} {c.rel}  {c.attribute}: {c.old!r} -> {c.new!r}"
                   + (f"  ({c.note})" if c.note else ""))
    if not changes:
        typer.echo("no label changes recorded")


@labels_app.command("undo", epilog=example("mhtag labels undo 42 --db indexes/shop"))
def undo(change: Annotated[int, typer.Argument(metavar="CHANGE", help="the change's id (`mhtag labels history`)")],
         db: Db = None) -> None:
    """Take a label change back (as a new change, recorded too)."""
    from mhtag.catalogue.edits import undo as take_back
    from mhtag.index.store import DEFAULT_DB

    made = take_back(db or DEFAULT_DB, change)
    typer.echo(f"change {made.id}: {made.rel} {made.attribute} {made.old!r} -> {made.new!r} ({made.note})")
