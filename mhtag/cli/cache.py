"""`mhtag cache`."""

from __future__ import annotations

import re
from typing import Annotated, Optional

import typer

from mhtag.cli.app import AsJson, app, echo_json, example

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12}


def parse_size(text: str) -> int:
    """'2GB', '500 MB', '0' -> bytes (decimal units)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?B?)", text.strip().upper())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size such as 2GB or 500MB", param_hint="--prune-to")
    return int(float(match[1]) * _UNITS[match[2]])


@app.command(epilog=example("mhtag cache", "mhtag cache --prune-to 2GB"))
def cache(prune_to: Annotated[Optional[str], typer.Option(
              help="keep at most this much (2GB, 500MB), deleting the least recently used first")] = None,
          unused_days: Annotated[Optional[float], typer.Option(
              min=0, help="delete backbones' features unused for more than this many days")] = None,
          clear: Annotated[bool, typer.Option("--clear", help="delete every stored feature")] = False,
          as_json: AsJson = False) -> None:
    """Show the feature store ($MHTAG_CACHE/features, else ~/.cache/mhtag/features: each image's backbone
    features, once per backbone), or prune it by last use. Pruning is always safe: it only costs the next use of a
    pruned backbone the embedding time."""
    from mhtag.inference.store import prune_store, store_usage

    max_bytes = 0 if clear else parse_size(prune_to) if prune_to is not None else None
    pruning = max_bytes is not None or unused_days is not None
    report = prune_store(max_bytes, unused_days) if pruning else store_usage()
    if as_json:
        echo_json(report)
        return
    typer.echo(f"{report.folder}: {report.entries} backbone(s), {report.bytes / 1e6:.1f} MB"
               + (f", last used {report.newest_use_days:g} to {report.oldest_use_days:g} days ago"
                  if report.entries else ""))
    if pruning:
        typer.echo(f"removed {report.removed} ({report.freed_bytes / 1e6:.1f} MB); "
                   f"forgot {report.forgotten_checks} check(s) of vanished files")
