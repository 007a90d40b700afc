"""Progress bars (rich) for long work. Apart from `runtime` so that commands which never load torch (search,
export, image checks) can show progress without waiting for it to import."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator:
    """A rich progress bar showing rate and ETA; yields `advance(n)`."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TaskProgressColumn(show_speed=True),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
