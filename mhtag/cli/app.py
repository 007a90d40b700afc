"""The Typer app, its root options, shared option types, and `main()`: the only place that maps errors to
exit codes (usage error 2, user error 1, interrupted 130)."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
import typer.core

from mhtag.core.errors import MhtagError


class WorkflowOrder(typer.core.TyperGroup):
    """`mhtag --help` lists the commands in the order a user meets them (their registration order), not A-Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


# Plain help (no rich markup): flags show as flags, and text such as '.[ray]' is printed as written.
app = typer.Typer(cls=WorkflowOrder, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="Multi-head image tagging and attribute search: learn every attribute of an image at once, "
                       "index a catalogue, search it by any attribute or by similarity.")
_debug = False  # set by --debug: show full tracebacks for user errors too
_threads: int | None = None  # set by --threads


class Mode(str, Enum):
    auto = "auto"
    probe = "probe"
    finetune = "finetune"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


class SourceChoice(str, Enum):
    label = "label"
    pred = "pred"
    any = "any"


Labels = Annotated[Path, typer.Option("--labels", metavar="CSV",
                                       help="labels CSV: a `path` column plus one column per attribute")]
Images = Annotated[Optional[Path], typer.Option("--images", metavar="DIR",
                                                help="image root (default: the CSV's folder)")]
ZeroShotSpec = Annotated[Optional[list[str]], typer.Option("--zero-shot", metavar="NAME=V1,V2,...",
                                                           help="an attribute answered from prompts through the "
                                                                "model's text tower (repeatable)")]
Multilabel = Annotated[Optional[list[str]], typer.Option("--multilabel", metavar="COLUMN",
                                                         help="a `|`-separated tag column (repeatable)")]
Ignore = Annotated[Optional[list[str]], typer.Option("--ignore", metavar="COLUMN",
                                                     help="a column that is not a head (repeatable)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the typed result as JSON (what the API answers)")]
Model = Annotated[Optional[Path], typer.Option("--model", metavar="RUN",
                                               help="a trained run's folder (default: the index's own model)")]
Db = Annotated[Optional[str], typer.Option(
    "--db", metavar="INDEX", help="index folder, or an object-store URI such as s3://bucket/prefix (its options: "
                                  "the JSON in MHTAG_STORAGE_OPTIONS); default: indexes/default")]


def example(*lines: str) -> str:
    """A command's epilog: how it is typed (click keeps the lines as written after a \\b line)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


class _StderrNow(logging.StreamHandler):
    """Log lines go to whatever `sys.stderr` is when written: a caller that runs commands in-process (a test
    runner, a notebook) swaps it per command, and a handler bound to the first one would write to a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False,
          threads: Annotated[Optional[int], typer.Option(
              "--threads", min=1, help="CPU threads for torch and FAISS (default: OMP_NUM_THREADS, else all cores)")
          ] = None) -> None:
    global _debug, _threads
    _debug, _threads = debug, threads
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True,
                        handlers=[_StderrNow()])
    logging.getLogger("faiss").setLevel(logging.WARNING)  # it logs which SIMD build it loaded
    if not debug:  # the terminal is for progress and results; library warnings are for --debug
        warnings.filterwarnings("ignore")


def prepare(torch: bool = True) -> None:
    """Process setup before a command computes: threads for torch and FAISS (here, not at import: a usage
    error should not wait for torch to load). `torch=False`: a command that never runs a model (a search
    without a query image, an export) sets up FAISS alone and answers without loading torch (seconds)."""
    from mhtag.index.vectors import setup_faiss

    if not torch:
        setup_faiss(_threads)  # None: FAISS's own default, OMP_NUM_THREADS else every core, as `setup` picks
        return
    from mhtag.core.runtime import setup

    setup_faiss(setup(_threads))


def threads_option() -> int | None:
    """`mhtag --threads`, for work that runs in other processes (the server's workers)."""
    return _threads


def is_rank0() -> bool:
    """Under torchrun every process runs the command; only the first reports."""
    return os.environ.get("RANK", "0") == "0"


def echo_json(obj) -> None:
    """A typed result (pydantic) or plain data, as indented JSON."""
    if hasattr(obj, "model_dump_json"):
        typer.echo(obj.model_dump_json(indent=2))
    else:
        typer.echo(json.dumps(obj, indent=2, default=str))


def filter_pairs(args: list[str], filter_options: list[str] | None) -> list[tuple[str, str]]:
    """Attribute filters from a command's extra arguments (`--type Dress`) and its `--filter NAME=VALUE`s."""
    return attribute_pairs(args) + [_split_filter(f) for f in filter_options or []]


def _split_filter(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise MhtagError(f"--filter {text!r} must look like NAME=VALUE")
    return name.strip(), value


def attribute_pairs(args: list[str]) -> list[tuple[str, str]]:
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


def main() -> None:
    """Entry point: a usage error prints the usage and the reason (exit 2), a user error one line (exit 1),
    Ctrl-C exits 130; `--debug` shows tracebacks."""
    # Idle OpenMP threads must sleep, not spin: with spinning threads two processes on a 2-core machine slow
    # each other several-fold instead of sharing the cores. Read once, when torch loads: set it before that.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mhtag.cli  # noqa: F401  (registers the commands)

    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n here
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
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.TyperException as exc:  # click's usage errors: they carry their message and exit code
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:  # a full disk or a read-only folder outside an index (the cache, a report, an export)
        from mhtag.index.guard import storage_message

        message = storage_message(exc, exc.filename or "the output")
        if message is None or _debug:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
