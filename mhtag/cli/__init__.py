"""The `mhtag` command line: a Typer app with one thin module per command over the library."""

from mhtag.cli import (  # noqa: F401  (each module registers its command)
    audit,
    backbones,
    cache,
    demo,
    ensemble,
    evaluate,
    export,
    index,
    inspect,
    predict,
    search,
    serve,
    train,
)
from mhtag.cli.app import app, main

__all__ = ["app", "main"]
