"""`mhtag audit`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, Ignore, Images, Labels, Model, Multilabel, app, echo_json, example, prepare
from mhtag.core.errors import MhtagError


@app.command(epilog=example("mhtag audit --labels shop/labels.csv --html audit.html --export suspects.csv"))
def audit(labels: Labels, images: Images = None, model: Model = None,
          backbone: Annotated[str, typer.Option(help="embed with this backbone (without --model)")
                              ] = "efficientnet_lite0",
          attribute: Annotated[Optional[list[str]], typer.Option("--attribute", help="audit only these")] = None,
          multilabel: Multilabel = None, ignore: Ignore = None,
          folds: Annotated[int, typer.Option(min=2, help="cross-fitting folds")] = 5,
          k: Annotated[int, typer.Option(min=1, help="neighbours that vote")] = 20,
          near: Annotated[float, typer.Option(min=0.5, max=1.0, help="cosine for near-duplicates")] = 0.97,
          image_size: Annotated[Optional[str], typer.Option(help="HxW to embed at, e.g. 160x120")] = None,
          as_json: AsJson = False,
          html: Annotated[Optional[Path], typer.Option(help="write a page of the top suspects with neighbours")
                          ] = None,
          export: Annotated[Optional[Path], typer.Option(help="write an editable CSV of the suspects")] = None,
          top: Annotated[int, typer.Option(min=1, help="suspects shown per attribute")] = 10) -> None:
    """Find the wrong labels, the duplicates and the split leaks of a labelled image set."""
    prepare()
    from mhtag.audit.labels import AuditOptions, audit_labels, export_suspects
    from mhtag.report.audit import write_audit_html
    from mhtag.report.text import shown

    options = AuditOptions(attributes=attribute, folds=folds, k=k, near=near, image_size=_size(image_size))
    result = audit_labels(labels, images, model, backbone, multilabel or [], ignore or [], options, progress=True)
    if html:
        write_audit_html(result, images or labels.parent, html)
    if export:
        export_suspects(result, export)
    if as_json:
        echo_json(result)
        return
    for name in result.summary["attributes"]:
        mine = [s for s in result.suspects if s.attribute == name]
        typer.echo(f"{name}: {result.summary['flagged'][name]} flagged of {len(mine)}")
        for s in mine[:top]:
            typer.echo(f"  {s.score:.3f}  {shown(s.path)}  {s.given} -> {s.suggested}")
    typer.echo(f"duplicate groups: {len(result.duplicates)} ({result.summary['duplicate_groups_crossing_splits']} "
               f"cross splits, {result.summary['duplicate_groups_conflicting']} with differing labels)")
    typer.echo(f"labels against a rule the other rows follow: {len(result.rule_breaks)}")
    for b in result.rule_breaks[:top]:
        typer.echo(f"  {shown(b.path)}  {b.attribute} {b.given} -> {b.expected}  ({b.rule}: {b.support} of {b.rows})")
    for path in filter(None, (html, export)):
        typer.echo(f"wrote {path}")


def _size(text: str | None) -> list[int] | None:
    if text is None:
        return None
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit():
        raise MhtagError(f"--image-size {text!r} must look like 160x120 (height x width)")
    return [int(h), int(w)]


@app.command("apply-fixes",
             epilog=example("mhtag apply-fixes --labels labels.csv --fixes suspects.csv --out fixed.csv"))
def apply_fixes_command(labels: Labels,
                        fixes: Annotated[Path, typer.Option(help="the edited CSV from `mhtag audit --export`")],
                        out: Annotated[Path, typer.Option(help="where to write the corrected labels CSV")]) -> None:
    """Write a copy of the labels CSV with the `fix` column of an edited audit export applied."""
    from mhtag.audit.labels import apply_fixes

    if out.resolve() == labels.resolve():
        raise MhtagError("--out must differ from --labels: the original labels are kept")
    typer.echo(f"{apply_fixes(labels, fixes, out)} label(s) fixed; wrote {out}")
