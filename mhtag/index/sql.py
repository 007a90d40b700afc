"""SQL over the index table: the user's own `where` (checked to be one complete expression), and the SQL form of
a query's filters for LanceDB. Filter values reach SQL only after `resolve_filters` mapped them onto the index's
own vocabulary, and they are quoted as SQL strings (a `'` doubled), so a user's text is never SQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mhtag.core.errors import MhtagError
from mhtag.data.schema import tag_token
from mhtag.index.columns import StoredAttribute
from mhtag.index.filters import Source, source_term
from mhtag.index.guard import index_problem
from mhtag.index.meta import IndexMeta
from mhtag.index.store import open_table


def sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def check_where(where: str) -> str:
    """Refuse anything but one complete SQL expression: no `;`, balanced parentheses and closed quotes
    (LanceDB would otherwise evaluate the first expression and silently drop the rest)."""
    depth, quote, i = 0, None, 0
    while i < len(where):
        c = where[i]
        if quote:
            if c == quote and where[i + 1:i + 2] == quote:
                i += 1  # a doubled quote inside a string
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == ";":
            raise MhtagError(f"--where {where!r}: ';' is not allowed; give one SQL expression")
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise MhtagError(f"--where {where!r}: a ')' at character {i + 1} closes nothing")
        i += 1
    if quote:
        raise MhtagError(f"--where {where!r}: a {quote} quote is never closed")
    if depth:
        raise MhtagError(f"--where {where!r}: {depth} '(' never closed")
    return where


def user_error(exc: Exception, db: Path, where: str | None) -> MhtagError | None:
    """The user's `where` named as the cause of a LanceDB failure, unless the table itself is the problem."""
    if where is None or index_problem(exc, db) is not None:
        return None
    return MhtagError(f"--where {where!r} could not be evaluated: {str(exc).splitlines()[0][:300]}")


def rows_passing(db: Path, where: str) -> np.ndarray:
    """Row keys passing the user's own SQL, evaluated by LanceDB (the source of truth). Wrapped in parentheses,
    so that the parser must consume all of it: bare, trailing text after one expression is silently dropped."""
    q = open_table(db).search().select(["rid"]).limit(None).where(f"({check_where(where)})", prefilter=True)
    try:
        return q.to_arrow().column("rid").to_numpy()
    except (ValueError, RuntimeError, OSError) as exc:
        raise user_error(exc, db, where) or exc from exc


def has_values(column: str, a: StoredAttribute, values: list[str]) -> str:
    if a.multi:
        return " OR ".join(f"strpos({column}, {sql_string(tag_token(v))}) > 0" for v in values)
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"


def filter_sql(meta: IndexMeta, filters: dict[str, list[str]], source: Source = Source.ANY,
               min_confidence: float | None = None, disputed: bool = False) -> str | None:
    """The SQL form of a query's filters (resolved values only), or None for no filter."""
    terms = []
    for name, values in filters.items():
        a = meta.attribute(name)

        def by_pred(a=a, values=values) -> str:
            hit = has_values(a.pred, a, values)
            return hit if min_confidence is None else f"({hit}) AND {a.conf} >= {float(min_confidence)!r}"

        terms.append(source_term(a, source, lambda a=a, values=values: has_values(a.label, a, values), by_pred,
                                 lambda a=a: f"{a.label} = ''", lambda x, y: f"({x}) OR ({y})",
                                 lambda x, y: f"({x}) AND ({y})"))
    if disputed:
        both = [a for a in meta.attributes if a.has_head and a.has_labels and (not filters or a.name in filters)]
        labelled_row = " OR ".join(f"{a.label} != ''" for a in meta.attributes if a.has_labels) or "false"

        def known(a: StoredAttribute) -> str:  # a tag group's empty label is "no tags" on a labelled row
            return labelled_row if a.multi else f"{a.label} != ''"

        terms.append(" OR ".join(f"(({known(a)}) AND {a.label} != {a.pred})" for a in both) or "false")
    return " AND ".join(f"({t})" for t in terms) or None


def all_of(*terms: str | None) -> str | None:
    kept = [f"({t})" for t in terms if t]
    return " AND ".join(kept) or None


def count_rows(db: Path, sql: str | None, where: str | None = None) -> int:
    """Rows passing `sql` (the filters' SQL, with the user's `where` in it), counted by LanceDB."""
    table = open_table(db)
    try:
        return table.count_rows(sql) if sql else table.count_rows()
    except (ValueError, RuntimeError, OSError) as exc:
        raise user_error(exc, db, where) or exc from exc
