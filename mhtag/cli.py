"""The `mhtag` command line: thin Typer commands over the library; the only module that talks to the terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.errors import MhtagError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Multi-head image tagging and attribute search.")
_debug = False  # set by --debug: show full tracebacks for user errors too

Labels = Annotated[Path, typer.Option("--labels", help="labels CSV: a `path` column plus one column per attribute")]
Images = Annotated[Optional[Path], typer.Option("--images", help="image root (default: the CSV's folder)")]
Multilabel = Annotated[Optional[list[str]], typer.Option("--multilabel", help="a `|`-separated tag column")]
Ignore = Annotated[Optional[list[str]], typer.Option("--ignore", help="a column that is not a head")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False) -> None:
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # it logs which SIMD build it loaded


def _is_rank0() -> bool:
    """Under torchrun every process runs the command; only the first reports."""
    return os.environ.get("RANK", "0") == "0"


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command("make-demo-data")
def make_demo_data(out: Path, n: Annotated[int, typer.Option(help="number of images")] = 1000,
                   size: Annotated[int, typer.Option(help="image side in pixels")] = 96,
                   seed: int = 0) -> None:
    """Write a synthetic dataset (shapes: colour, size, background; multi-label marks) to OUT."""
    from mhtag.synthetic import make_demo_data as make

    csv_path = make(out, n, size, seed)
    typer.echo(f"wrote {n} images and {csv_path} (multi-label column: marks)")


@app.command()
def inspect(labels: Annotated[Path, typer.Argument(help="labels CSV")], images: Images = None,
            multilabel: Multilabel = None, ignore: Ignore = None,
            out: Annotated[Optional[Path], typer.Option(help="folder for health.json and classes.png")] = None,
            as_json: AsJson = False) -> None:
    """Data health before training: balance, missing values, image sizes/modes, unreadable files, duplicates."""
    from mhtag.health import inspect_labels
    from mhtag.report import class_distribution_png, health_text

    health = inspect_labels(labels, images, multilabel or [], ignore or [])
    out = out or labels.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "health.json").write_text(json.dumps(health, indent=2))
    class_distribution_png(health, out / "classes.png")
    if as_json:
        _echo_json(health)
    else:
        typer.echo(health_text(health))
        typer.echo(f"\nwrote {out / 'health.json'} and {out / 'classes.png'}")


@app.command()
def train(labels: Labels, images: Images = None,
          config: Annotated[Optional[Path], typer.Option(help="YAML preset (see configs/)")] = None,
          mode: Annotated[Optional[str], typer.Option(help="finetune | probe (default: auto)")] = None,
          backbone: Annotated[Optional[str], typer.Option(help="backbone name (see `mhtag backbones`)")] = None,
          multilabel: Multilabel = None, ignore: Ignore = None,
          epochs: Annotated[Optional[int], typer.Option()] = None,
          batch_size: Annotated[Optional[int], typer.Option()] = None,
          lr: Annotated[Optional[float], typer.Option()] = None,
          seed: Annotated[Optional[int], typer.Option()] = None,
          out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/latest"),
          resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
          set_: Annotated[Optional[list[str]], typer.Option("--set", help="any config key=value")] = None) -> None:
    """Train one model with a head per attribute of the labels CSV."""
    from mhtag.config import load_config, parse_overrides
    from mhtag.report import metrics_table
    from mhtag.train import fit

    flags = {"mode": mode, "backbone": backbone, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "seed": seed, "multilabel": multilabel or None, "ignore": ignore or None}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_overrides(set_ or [])
    run = fit(load_config(config, overrides), labels, images, out, resume=resume, progress=sys.stderr.isatty())
    if not _is_rank0():
        return
    best = run.best
    if run.skipped:
        typer.echo(f"skipped {len(run.skipped)} row(s), e.g. {run.skipped[0]}", err=True)
    if best:
        typer.echo(f"best epoch {best['epoch'] + 1}: mean val macro-F1 {best['score']:.4f}")
        typer.echo(metrics_table(best["heads"]))
    typer.echo(f"{'stopped early; ' if run.interrupted else ''}run saved in {run.dir} (report: "
               f"{run.dir / 'report.html'})")


@app.command("eval")
def eval_(model: Annotated[Path, typer.Option("--model", help="run folder or checkpoint")], labels: Labels,
          images: Images = None, split: Annotated[str, typer.Option(help="train | val | test | all")] = "test",
          as_json: AsJson = False) -> None:
    """Per-head metrics of a trained model on one split."""
    from mhtag.evaluate import evaluate
    from mhtag.report import metrics_table

    result = evaluate(model, labels, images, split, progress=sys.stderr.isatty())
    if as_json:
        _echo_json(result)
        return
    typer.echo(f"{result['n']} rows of split {split!r}")
    typer.echo(metrics_table(result["heads"]))
    unknown = {k: v for k, v in result["unknown_labels"].items() if v}
    if unknown:
        typer.echo(f"labels unseen in training (left out of metrics): {unknown}")


Db = Annotated[Optional[Path], typer.Option("--db", help="index folder (default: indexes/default)")]


@app.command()
def index(folder: Annotated[Path, typer.Argument(help="folder of images, walked recursively")], db: Db = None,
          model: Annotated[Optional[Path], typer.Option(help="trained run (default: the index's own model)")] = None,
          labels: Annotated[Optional[Path], typer.Option(help="known labels CSV; `path` relative to FOLDER")] = None,
          multilabel: Multilabel = None,
          rebuild: Annotated[bool, typer.Option(help="drop the index and re-embed everything")] = False,
          prune: Annotated[bool, typer.Option(help="drop rows whose file is gone")] = False,
          batch_size: Annotated[int, typer.Option()] = 64,
          workers: Annotated[Optional[int], typer.Option(help="decoding processes (default: auto)")] = None
          ) -> None:
    """Embed and tag every image under FOLDER into a LanceDB index (incremental, resumable)."""
    from mhtag.index import index_images
    from mhtag.store import DEFAULT_DB

    r = index_images(folder, db or DEFAULT_DB, model, labels, multilabel or [], rebuild, prune, batch_size,
                     workers=workers, progress=sys.stderr.isatty())
    if not _is_rank0():
        return
    typer.echo(f"{r.db}: {r.rows} rows ({r.added} new, {r.updated} re-embedded, {r.unchanged} unchanged, "
               f"{r.pruned} pruned) in {r.seconds:.1f}s, {r.images_per_second:.1f} images/s")
    if not r.has_heads:
        typer.echo("no --model: embeddings only (similarity search and known labels work; heads are absent)")
    if r.fusion:
        typer.echo(f"fusion weights (head vs neighbours, tuned on val rows): {r.fusion}")
    for path, reason in r.failed:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if r.failed:
        typer.echo(f"{len(r.failed)} unreadable file(s) skipped", err=True)


@app.command()
def predict(paths: Annotated[list[Path], typer.Argument(help="images or folders")], db: Db = None,
            model: Annotated[Optional[Path], typer.Option(help="trained run (default: the index's model)")] = None,
            k: Annotated[int, typer.Option(help="neighbours that vote")] = 20,
            min_similarity: Annotated[float, typer.Option(help="below this, neighbours answer unknown")] = 0.0,
            as_json: AsJson = False) -> None:
    """Head predictions, the vote of labelled neighbours, and their fusion, per attribute."""
    from mhtag.predict import predict as run_predict
    from mhtag.report import predictions_text
    from mhtag.store import DEFAULT_DB

    result = run_predict(paths, db or DEFAULT_DB, model, k, min_similarity, progress=sys.stderr.isatty())
    if as_json:
        _echo_json(result)
    else:
        typer.echo(predictions_text(result))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="Every attribute of the index is a filter: --type Dress --view side. Repeat an option to "
                    "OR its values; different attributes AND.")
def search(ctx: typer.Context, db: Db = None,
           where: Annotated[Optional[str], typer.Option(help="extra SQL filter over the index's columns")] = None,
           like: Annotated[Optional[Path], typer.Option(help="rank by similarity to this image")] = None,
           limit: Annotated[int, typer.Option()] = 20,
           min_confidence: Annotated[Optional[float], typer.Option(help="for predicted labels")] = None,
           source: Annotated[str, typer.Option(help="label | pred | any")] = "any",
           as_json: AsJson = False,
           sheet: Annotated[Optional[Path], typer.Option(help="write a contact sheet image of the results")] = None
           ) -> None:
    """Find images by any attribute, optionally ranked by similarity to an image."""
    from mhtag.report import contact_sheet, search_text
    from mhtag.search import search as run_search
    from mhtag.store import DEFAULT_DB, require_meta

    pairs = _attribute_pairs(ctx.args)
    db = db or DEFAULT_DB
    result = run_search(db, pairs, where, like, limit, min_confidence, source).to_dict()
    names = [a.name for a in require_meta(db).attributes]
    if sheet:
        contact_sheet(result["results"], names, sheet)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(search_text(result, names))
        if sheet:
            typer.echo(f"contact sheet: {sheet}")


def _attribute_pairs(args: list[str]) -> list[tuple[str, str]]:
    """`--type Dress --view=side` -> [("type", "Dress"), ("view", "side")]."""
    pairs, i = [], 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) < 3:
            raise MhtagError(f"unexpected argument {token!r}; attribute filters look like --NAME VALUE")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise MhtagError(f"--{name} needs a value")
            value = args[i + 1]
            i += 1
        pairs.append((name, value))
        i += 1
    return pairs


@app.command()
def backbones() -> None:
    """List registered backbones and families."""
    from mhtag.backbones import list_backbones

    typer.echo("\n".join(list_backbones()))


def main() -> None:
    """Entry point: a user error prints one line and exits 1; `--debug` shows its traceback."""
    try:
        app(standalone_mode=False)
    except MhtagError as exc:
        if _debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
