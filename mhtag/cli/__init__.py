"""The `mhtag` command line: a Typer app with one thin module per command over the library."""

from mhtag.cli import audit, backbones, cache, demo, ensemble, evaluate, index, inspect, predict, search, serve, train  # noqa: F401,E501
from mhtag.cli.app import app, main

__all__ = ["app", "main"]
