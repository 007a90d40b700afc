"""`mhtag train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import Ignore, Images, Labels, Mode, Multilabel, app, is_rank0, prepare


@app.command()
def train(labels: Labels, images: Images = None,
          config: Annotated[Optional[Path], typer.Option(help="YAML preset (see configs/)")] = None,
          mode: Annotated[Optional[Mode], typer.Option(help="default: auto (finetune on a GPU, probe on a CPU)")
                          ] = None,
          backbone: Annotated[Optional[str], typer.Option(help="backbone name (see `mhtag backbones`)")] = None,
          multilabel: Multilabel = None, ignore: Ignore = None,
          epochs: Annotated[Optional[int], typer.Option(min=1, help="epochs of the mode that runs (sets epochs "
                                                                    "and probe_epochs)")] = None,
          batch_size: Annotated[Optional[int], typer.Option(min=1)] = None,
          lr: Annotated[Optional[float], typer.Option(help="learning rate of the mode that runs (sets lr and "
                                                           "probe_lr)")] = None,
          seed: Annotated[Optional[int], typer.Option()] = None,
          teacher: Annotated[Optional[Path], typer.Option(help="a trained run or ensemble whose answers the model "
                                                               "learns beside the labels (distillation; the "
                                                               "teacher's share: --set distill=0.5)")] = None,
          out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/latest"),
          resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint; "
                                                    "epochs, lr and max_minutes may change")] = False,
          set_: Annotated[Optional[list[str]], typer.Option("--set", help="any config key=value")] = None) -> None:
    """Train one model with a head per attribute of the labels CSV."""
    prepare()
    from mhtag.core.config import load_config, parse_overrides, read_preset
    from mhtag.report.text import comparison_lines, metrics_table
    from mhtag.training.fit import fit, resumed_config

    flags = {"mode": mode.value if mode else None, "backbone": backbone, "epochs": epochs,
             "probe_epochs": epochs, "batch_size": batch_size, "lr": lr, "probe_lr": lr, "seed": seed,
             "multilabel": multilabel or None, "ignore": ignore or None,
             "teacher": str(teacher) if teacher else None}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_overrides(set_ or [])
    if resume:
        if config is not None:
            overrides = {**read_preset(config), **overrides}
        cfg, changes = resumed_config(out, overrides)
        for key, (old, new) in changes.items():
            typer.echo(f"resume: {key} {old} -> {new}", err=True)
    else:
        cfg = load_config(config, overrides)
    run = fit(cfg, labels, images, out, resume=resume, progress=sys.stderr.isatty())
    if not is_rank0():
        return
    if run.skipped:
        typer.echo(f"skipped {len(run.skipped)} row(s), e.g. {run.skipped[0]}", err=True)
    best = run.best
    if best:
        typer.echo(f"best epoch {best['epoch'] + 1}: mean val macro-F1 {best['score']:.4f}")
        typer.echo(metrics_table(best["heads"]))
    for line in comparison_lines(run.comparison, run.kept, cfg.keep):
        typer.echo(line)
    if run.interrupted:
        kept = ", ".join(str(p) for p in sorted(run.dir.rglob("*.pt")))
        typer.echo(f"interrupted: kept {kept}; continue with `mhtag train --labels {labels} --out {run.dir} "
                   "--resume`", err=True)
        raise typer.Exit(130)
    typer.echo(f"run saved in {run.dir}" + (f" (report: {run.report})" if run.report else ""))
