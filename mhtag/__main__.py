"""`python -m mhtag` is the `mhtag` command."""

from mhtag.cli.app import main

main()
