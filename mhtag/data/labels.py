"""The labels CSV: a `path` column (relative to the CSV's folder or an images root) and one column per attribute.

Single-label cells hold one class; multi-label cells hold `|`-separated tags (empty = none). Unusable rows are
skipped with their CSV row and the reason, never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mhtag.core.errors import MhtagError
from mhtag.data.images import check_image_files
from mhtag.data.schema import check_distinct_columns, is_blank

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MAX_ATTRIBUTES = 1000  # heads one labels CSV may define
MAX_HEADER_CHARS = 1 << 20  # the header line is read at most this far when the delimiter is detected
# Columns of `LabelTable.frame` that mhtag adds; dunder names so that no user column is shadowed.
FILE, ROW, SHA1 = "__file__", "__row__", "__sha1__"  # SHA1: content hash, once the files were checked


@dataclass
class Skipped:
    row: int  # line in the CSV (header = line 1)
    path: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} ({self.path}): {self.reason}"


@dataclass
class LabelTable:
    """The usable rows of a labels CSV: `frame` has `path`, `split`, the attributes, FILE (absolute) and ROW."""

    frame: pd.DataFrame
    attributes: list[str]
    multilabel: set[str]
    text_columns: list[str]
    skipped: list[Skipped]
    root: Path
    source: str = ""  # where the rows came from, for messages: the CSV's path, or an index

    def __str__(self) -> str:
        return self.source

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def absolute(path: str | Path) -> Path:
    """Absolute and `..`-free, without following symlinks: a folder of links to images stays that folder."""
    return Path(os.path.normpath(os.path.abspath(path)))


def hash_split(path: str) -> str:
    """Deterministic 80/10/10 split from the path alone, so it never changes as rows are added."""
    bucket = int(hashlib.sha1(path.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def _is_free_text(col: pd.Series) -> bool:
    values = col.dropna()
    return len(values) >= 20 and values.nunique() > 0.5 * len(values)


def _header(csv_path: Path) -> tuple[str, list[str]]:
    """The delimiter (`,` unless the header has no `path` column that way but does with `;` or a tab) and the
    header's column names. A repeated name is refused: pandas would rename it (`shape.1`), a silent second head."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            line = fh.readline(MAX_HEADER_CHARS)
    except UnicodeDecodeError as exc:
        raise MhtagError(f"{csv_path}: not a UTF-8 text file ({exc.reason})") from exc
    sep, columns = ",", []
    try:
        for candidate in (",", ";", "\t"):
            columns = [c.strip() for c in next(csv.reader([line], delimiter=candidate), [])]
            if "path" in columns:
                sep = candidate
                break
        else:
            columns = [c.strip() for c in next(csv.reader([line]), [])]
    except csv.Error as exc:
        raise MhtagError(f"{csv_path}: cannot parse the header ({exc})") from exc
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
    if repeated:
        raise MhtagError(f"{csv_path}: the header names column {repeated[0]!r} more than once; rename or remove one")
    return sep, columns


def read_csv_frame(csv_path: str | Path) -> pd.DataFrame:
    """The CSV as strings (blank cells NaN), header stripped; a clear error for what is not a labels CSV."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MhtagError(f"labels file {csv_path} does not exist" if not csv_path.exists()
                         else f"labels file {csv_path} is not a file")
    try:
        sep, _ = _header(csv_path)
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True,
                         sep=sep, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as exc:
        raise MhtagError(f"{csv_path}: the file is empty (expected a header with a 'path' column)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MhtagError(f"{csv_path}: cannot parse as CSV ({str(exc).splitlines()[0]})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if "path" not in df.columns:
        raise MhtagError(f"{csv_path}: no 'path' column (columns are: {', '.join(df.columns)}); the delimiter "
                         "may be ',', ';' or a tab")
    return df


def read_labels(csv_path: str | Path, images_root: str | Path | None = None, multilabel: list[str] | tuple = (),
                ignore: list[str] | tuple = (), check_files: bool = True) -> LabelTable:
    """Read and validate a labels CSV; unusable rows are skipped with the reason, never silently dropped."""
    csv_path = Path(csv_path)
    df = read_csv_frame(csv_path)
    for col in [*multilabel, *ignore]:
        if col not in df.columns:
            raise MhtagError(f"{csv_path}: column {col!r} named in multilabel/ignore is not in the CSV")
    root = absolute(images_root if images_root is not None else csv_path.parent)
    has_split = "split" in df.columns
    files, splits, keep, skipped = [], [], [], []
    seen: dict[str, int] = {}
    for i, (rel, split_cell) in enumerate(zip(df["path"], df["split"] if has_split else [None] * len(df),
                                              strict=True)):
        row = i + 2
        rel = "" if is_blank(rel) else str(rel).strip()
        if not rel:
            skipped.append(Skipped(row, rel, "empty path"))
            continue
        full = absolute(root / rel)
        if not full.is_relative_to(root):
            skipped.append(Skipped(row, rel, f"path escapes the image root {root}"))
            continue
        if str(full) in seen:
            skipped.append(Skipped(row, rel, f"duplicate path (first on row {seen[str(full)]})"))
            continue
        seen[str(full)] = row
        if check_files and not full.is_file():
            skipped.append(Skipped(row, rel, "is a directory" if full.is_dir() else "file not found"))
            continue
        split = str(split_cell).strip().lower() if not is_blank(split_cell) else hash_split(rel)
        if split not in SPLITS:
            skipped.append(Skipped(row, rel, f"split {split!r} is not one of {', '.join(SPLITS)}"))
            continue
        files.append(str(full))
        splits.append(split)
        keep.append(i)
    frame = df.iloc[keep].reset_index(drop=True)
    frame["path"] = frame["path"].str.strip()
    frame["split"], frame[FILE], frame[ROW] = splits, files, [k + 2 for k in keep]
    reserved = {"path", "split", *ignore}
    candidates = [c for c in df.columns if c not in reserved]
    text = [c for c in candidates if c not in multilabel and _is_free_text(frame[c])]
    if text:
        _logger.info("treating free-text column(s) %s as text, not heads", ", ".join(text))
    attributes = [c for c in candidates if c not in text]
    if len(attributes) > MAX_ATTRIBUTES:
        raise MhtagError(f"{csv_path}: {len(attributes)} attribute columns; mhtag learns at most {MAX_ATTRIBUTES} "
                         "heads from one CSV. Keep the columns to learn, or name the others with --ignore")
    if not attributes:
        raise MhtagError(f"{csv_path}: no attribute columns besides path/split (columns: {', '.join(df.columns)})")
    check_distinct_columns(attributes, str(csv_path))
    return LabelTable(frame, attributes, set(multilabel), text, skipped, root, str(csv_path))


def drop_unreadable(table: LabelTable, workers: int = 4, progress: bool = False) -> LabelTable:
    """Decode every image (once per version of the file); rows whose file is unusable move to `skipped` with
    the reason."""
    checks = check_image_files(table.frame[FILE].tolist(), workers, progress)
    bad = [i for i, check in enumerate(checks) if check.error]
    for i in bad:
        table.skipped.append(Skipped(int(table.frame[ROW].iat[i]), table.frame["path"].iat[i], checks[i].error))
    table.frame[SHA1] = [check.sha1 for check in checks]
    table.frame = table.frame.drop(index=bad).reset_index(drop=True)
    return table
