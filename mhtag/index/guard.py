"""What goes wrong under an index's feet, said in one line that names the index and what to do: a damaged table
(a truncated or deleted data file, a garbage manifest), a full disk, a read-only folder. Lance reports all of
these as `RuntimeError("lance error: ...")`; the file system as `OSError`."""

from __future__ import annotations

import errno
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from mhtag.core.errors import MhtagError

F = TypeVar("F", bound=Callable)
_OS_ERROR = re.compile(r"os error (\d+)")


class IndexUnavailable(MhtagError):
    """The index cannot be read or written as it is (damaged, or its disk is full or read-only)."""


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one Lance quotes in its message (`... (os error 28)`)."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def storage_message(exc: BaseException, where: str) -> str | None:
    """One line for a full, read-only or forbidden file system, or None for any other error."""
    code = os_errno(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device holding {where}; free some space and run again (what was " \
               "committed before is kept)"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system; choose a writable folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write {where} ({getattr(exc, 'filename', None) or 'a file in it'})"
    return None


def index_problem(exc: BaseException, db: str | Path) -> IndexUnavailable | None:
    """The user-facing form of an error raised while reading or writing index `db`, or None (a bug: re-raise)."""
    if isinstance(exc, MhtagError) or not isinstance(exc, (RuntimeError, OSError, ValueError)):
        return None
    storage = storage_message(exc, f"index {db}")
    if storage:
        return IndexUnavailable(storage)
    text = str(exc)
    if "lance error" in text.lower() or "LanceError" in text:
        first = text.strip().splitlines()[0][:240]
        return IndexUnavailable(f"index {db} cannot be read ({first}). If it is damaged, restore it from a backup "
                                f"or rebuild it with `mhtag index DIR --db {db} --rebuild`")
    return None


@contextmanager
def index_errors(db: str | Path) -> Iterator[None]:
    """Inside: a damaged table, a full disk or a read-only folder under index `db` becomes an `IndexUnavailable`
    naming it; anything else is left as it is."""
    try:
        yield
    except (RuntimeError, OSError, ValueError) as exc:
        problem = index_problem(exc, db)
        if problem is None:
            raise
        raise problem from exc


def guard_index(fn: F) -> F:
    """`index_errors` around a public function that takes `db`."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        with index_errors(bound.arguments.get("db", signature.parameters["db"].default)):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
