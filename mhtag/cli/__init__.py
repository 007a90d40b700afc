"""The `mhtag` command line: a Typer app with one thin module per command over the library. The modules are
imported in the order a user meets the commands, which is the order `mhtag --help` lists them."""

from mhtag.cli import (  # noqa: F401, I001  (each module registers its command; in workflow order)
    demo,
    inspect,
    train,
    evaluate,
    ensemble,
    index,
    predict,
    search,
    export,
    labels,
    audit,
    serve,
    backbones,
    cache,
)
from mhtag.cli.app import app, main

__all__ = ["app", "main"]
