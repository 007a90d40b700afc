"""`mhtag train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import Ignore, Images, Mode, Multilabel, app, example, is_rank0, prepare


@app.command(epilog=example("mhtag train --labels shop/labels.csv --config fashion_probe --out runs/shop",
                            "mhtag train --labels shop/labels.csv --out runs/shop --resume --epochs 8",
                            "mhtag train --db indexes/shop --out runs/shop2      # the catalogue's current labels"))
def train(labels: Annotated[Optional[Path], typer.Option(metavar="CSV", help="labels CSV: a `path` column plus one "
                                                                            "column per attribute")] = None,
          db: Annotated[Optional[str], typer.Option(metavar="INDEX", help="instead of --labels: an index's known "
                                                                          "labels and stored features (no image "
                                                                          "decoded for a probe)")] = None,
          images: Images = None,
          config: Annotated[Optional[str], typer.Option(metavar="PRESET", help="a preset by name (`mhtag configs` "
                                                                               "lists them) or a YAML file")] = None,
          mode: Annotated[Optional[Mode], typer.Option(help="default: auto (finetune on a GPU, probe on a CPU)")
                          ] = None,
          backbone: Annotated[Optional[str], typer.Option(help="backbone name (see `mhtag backbones`)")] = None,
          multilabel: Multilabel = None, ignore: Ignore = None,
          epochs: Annotated[Optional[int], typer.Option(min=1, help="epochs of the fine-tune (config epochs)")] = None,
          probe_epochs: Annotated[Optional[int], typer.Option(min=1, help="epochs of the probe: the whole of a CPU "
                                                                          "run, or LP-FT's first phase")] = None,
          lr: Annotated[Optional[float], typer.Option(help="learning rate of the fine-tune's heads (config lr)")
                        ] = None,
          probe_lr: Annotated[Optional[float], typer.Option(help="learning rate of the probe's heads")] = None,
          batch_size: Annotated[Optional[int], typer.Option(min=1, help="images a step (fine-tune)")] = None,
          seed: Annotated[Optional[int], typer.Option()] = None,
          out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/latest"),
          resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint; "
                                                                "its schedule may change")] = False,
          set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE",
                                                            help="any config key (repeatable)")] = None,
          captions: Annotated[Optional[str], typer.Option(metavar="COLUMN", help="also learn a text tower from "
                                                                                 "this caption column (text search, "
                                                                                 "zero-shot, describe)")] = None
          ) -> None:
    """Train one model with a head per attribute of the labels CSV (or of an index's known labels)."""
    from mhtag.core.config import load_config, parse_overrides, read_preset
    from mhtag.core.errors import MhtagError

    if (labels is None) == (db is None):
        raise typer.BadParameter("give the labels to learn: --labels CSV, or --db INDEX", param_hint="--labels / --db")
    if captions is not None:
        _check_caption_column(captions, labels, db)

    flags = {"mode": mode.value if mode else None, "backbone": backbone, "epochs": epochs,
             "probe_epochs": probe_epochs, "batch_size": batch_size, "lr": lr, "probe_lr": probe_lr, "seed": seed,
             "multilabel": multilabel or None, "ignore": ignore or None}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_overrides(set_ or [])
    if resume:
        from mhtag.training.fit import resumed_config

        if config is not None:
            overrides = {**read_preset(config), **overrides}
        cfg, changes = resumed_config(out, overrides)
        for key, (old, new) in changes.items():
            typer.echo(f"resume: {key} {old} -> {new}", err=True)
    elif db is None or config is not None:
        cfg = load_config(config, overrides)  # a bad value is refused here, before torch is even loaded
    prepare()
    from mhtag.report.text import comparison_lines, metrics_table
    from mhtag.training.fit import fit

    source = labels
    if db is not None:
        from mhtag.catalogue.retrain import catalogue_table, same_space_config
        from mhtag.index.meta import require_meta

        if resume:
            raise MhtagError("--resume continues a run trained from a CSV; train from --db anew")
        if config is None:  # the index's own backbone and preprocessing: its stored features serve, and the
            cfg = same_space_config(require_meta(db), overrides)  # new heads index without --rebuild
        source = catalogue_table(db, multilabel or [])
    run = fit(cfg, source, images, out, resume=resume, progress=True)
    if not is_rank0():
        return
    if run.skipped:
        typer.echo(f"skipped {len(run.skipped)} row(s), e.g. {run.skipped[0]}", err=True)
    best = run.best
    if best:
        typer.echo(f"best epoch {best['epoch'] + 1}: mean val macro-F1 {best['score']:.4f}; the shipped model on "
                   "val, calibrated:")
        typer.echo(metrics_table(run.val_metrics or best["heads"]))
    for line in comparison_lines(run.comparison, run.kept, cfg.keep):
        typer.echo(line)
    if run.interrupted:
        kept = ", ".join(str(p) for p in sorted(run.dir.rglob("*.pt")))
        typer.echo(f"interrupted: kept {kept}; continue with `mhtag train --labels {source} --out {run.dir} "
                   "--resume`", err=True)
        raise typer.Exit(130)
    if captions is not None:
        _learn_text_tower(captions, run, source, images, cfg)
    typer.echo(f"run saved in {run.dir}" + (f" (report: {run.report})" if run.report else ""))


def _check_caption_column(column: str, labels: Path | None, db: str | None) -> None:
    """A caption column the labels do not have is refused before anything trains."""
    if labels is not None:
        from mhtag.data.labels import read_csv_frame

        have = list(read_csv_frame(labels).columns)
    else:
        from mhtag.index.meta import require_meta

        have = require_meta(db).text_columns
    if column not in have:
        raise typer.BadParameter(f"no column {column!r} in the labels; free-text columns of an index, or any column "
                                 f"of a CSV: {', '.join(map(str, have))}", param_hint="--captions")


def _learn_text_tower(column: str, run, source, images, cfg) -> None:
    from mhtag.data.labels import LabelTable, drop_unreadable, read_labels
    from mhtag.training.captions import CaptionOptions, fit_text_tower

    table = source if isinstance(source, LabelTable) else \
        drop_unreadable(read_labels(source, images, cfg.multilabel, cfg.ignore))
    report = fit_text_tower(table, run.model.backbone, run.dir, CaptionOptions(column), progress=True)
    recall = f"val recall@10 {report.val_recall_at_10:.3f}" if report.val_recall_at_10 is not None else "no val rows"
    typer.echo(f"text tower from {report.captions} captions ({recall}, epoch {report.kept_epoch} kept), "
               f"{report.phrases} phrases to describe with")


@app.command(epilog=example("mhtag configs", "mhtag train --labels labels.csv --config fashion_probe"))
def configs() -> None:
    """List the presets that ship with mhtag (use one by name: --config NAME)."""
    from mhtag.core.config import list_presets

    presets = list_presets()
    width = max(map(len, presets))
    for name, purpose in presets.items():
        typer.echo(f"{name.ljust(width)}  {purpose}")
