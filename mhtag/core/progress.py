"""Progress of long work: a rich bar on a terminal, and plain log lines (every LOG_EVERY_S, then a last one) when
the output goes to a file or a pipe, so that a log of a six-minute embedding shows it moving. Apart from `runtime`
so that commands which never load torch (search, export, image checks) can show progress without waiting for it."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_logger = logging.getLogger("mhtag.progress")
LOG_EVERY_S = 10.0


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`. On a terminal a rich bar with rate and ETA; elsewhere a log line now and then."""
    if not enabled:
        yield lambda n=1: None
    elif sys.stderr.isatty():
        with _rich_bar(description, total) as advance:
            yield advance
    else:
        with _log_lines(description, total) as advance:
            yield advance


@contextmanager
def _rich_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TaskProgressColumn(show_speed=True), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def _log_lines(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """`description: done/total (share), rate, time left` at most every LOG_EVERY_S; a last line if any was
    written (short work says nothing)."""
    start = last = time.monotonic()
    done = 0
    said = False

    def line(now: float) -> str:
        rate = done / max(now - start, 1e-9)
        of = f"/{total:,} ({done / total:.0%})" if total else ""
        left = f", {(total - done) / rate:.0f} s left" if total and rate > 0 and done < total else ""
        return f"{description}: {done:,}{of}, {rate:.1f}/s{left}"

    def advance(n: int = 1) -> None:
        nonlocal done, last, said
        done += n
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            _logger.info(line(now))
            last, said = now, True

    yield advance
    if said:
        _logger.info(line(time.monotonic()) + f" in {time.monotonic() - start:.0f} s")
