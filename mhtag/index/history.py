"""The label history: every change of a known label (row, attribute, old, new, when, source), kept beside the
index as a LanceDB table and never rewritten. It is the write-ahead log of the label columns: a change is recorded
before the table is written, and one whose write was cut off (a killed process) is applied again by the next edit.
A history the index's meta says exists, but that is missing, is an error, never silently started anew."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from mhtag.core.errors import MhtagError
from mhtag.data.schema import decode_tags
from mhtag.index.meta import IndexMeta
from mhtag.index.store import connect
from mhtag.results import LabelChange

HISTORY = "label_history"
SOURCES = ("gallery", "review", "csv", "api", "undo")


@dataclass(frozen=True)
class Change:
    id: int  # 1, 2, 3... in the order the changes were made
    rid: int
    rel: str  # the row's path under its folder, for people reading the history
    attribute: str
    old: str  # stored form: "" = no label; tags as |a|b|
    new: str
    at_ns: int  # when, in nanoseconds since the epoch
    source: str  # gallery | review | csv | api | undo
    note: str = ""  # e.g. which change an undo took back


SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("rid", pa.int64()), pa.field("rel", pa.string()),
                    pa.field("attribute", pa.string()), pa.field("old", pa.string()), pa.field("new", pa.string()),
                    pa.field("at_ns", pa.int64()), pa.field("source", pa.string()), pa.field("note", pa.string())])


def shown(change: Change, multi: bool) -> LabelChange:
    """A change as the CLI and the API show it: tags as lists, no label as null, the time in ISO 8601."""
    def value(v: str) -> str | list[str] | None:
        return decode_tags(v) if multi else v or None

    at = datetime.fromtimestamp(change.at_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
    return LabelChange(id=change.id, row=change.rid, rel=change.rel, attribute=change.attribute,
                       old=value(change.old), new=value(change.new), at=at, source=change.source, note=change.note)


class LabelHistory:
    """The changes of the index at `db` (whose current meta is `meta`)."""

    def __init__(self, db: str | Path, meta: IndexMeta):
        self.db, self.meta = db, meta
        conn = connect(db)
        if HISTORY in conn.list_tables().tables:
            self.table = conn.open_table(HISTORY)
        elif meta.label_changes:
            raise MhtagError(f"the label history of index {db} is missing ({meta.label_changes} change(s) were "
                             f"recorded): restore {HISTORY}.lance from a backup; nothing was changed")
        else:
            self.table = None

    def all(self) -> list[Change]:
        if self.table is None:
            return []
        rows = self.table.to_arrow().sort_by("id").to_pylist()
        if len(rows) < self.meta.label_changes:
            raise MhtagError(f"the label history of index {self.db} holds {len(rows)} change(s) of the "
                             f"{self.meta.label_changes} it recorded: restore {HISTORY}.lance from a backup")
        return [Change(**row) for row in rows]

    def of_row(self, rid: int) -> list[Change]:
        if self.table is None:
            return []
        rows = self.table.search().where(f"rid = {int(rid)}").limit(None).to_arrow().sort_by("id").to_pylist()
        return [Change(**row) for row in rows]

    def after(self, change_id: int) -> list[Change]:
        return [c for c in self.all() if c.id > change_id]

    def corrected(self) -> dict[int, set[str]]:
        """Per row, the attributes people have set: a labels CSV given to a later `mhtag index` leaves them."""
        out: dict[int, set[str]] = {}
        for c in self.all():
            out.setdefault(c.rid, set()).add(c.attribute)
        return out

    def record(self, changes: list[dict]) -> list[Change]:
        """Append changes (each a dict of Change's fields but `id` and `at_ns`); returns them as recorded."""
        first = (self.table.count_rows() if self.table is not None else 0) + 1  # ids stay contiguous
        now = time.time_ns()
        made = [Change(id=first + i, at_ns=now, **{"note": "", **c}) for i, c in enumerate(changes)]
        data = pa.Table.from_pylist([c.__dict__ for c in made], schema=SCHEMA)
        if self.table is None:
            self.table = connect(self.db).create_table(HISTORY, data=data, schema=SCHEMA)
        else:
            self.table.add(data)
        return made
