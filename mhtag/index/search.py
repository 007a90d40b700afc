"""Attribute search over an index: filter by any attribute (known labels, predictions or either), optionally
ranked by similarity to an image. Attribute filters are evaluated on the in-memory snapshot of the table by
comparing values: a user's value is never pasted into SQL (`where` is the user's own SQL, run by LanceDB after
a check that it is one complete expression). The filter runs first, then the nearest-neighbour step over the
rows that passed, so `limit` rows come back whenever at least that many match."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.storage import location
from mhtag.data.schema import decode_tags
from mhtag.index import ann
from mhtag.index.columns import StoredAttribute, text_column
from mhtag.index.filters import Source, source_term
from mhtag.index.guard import guard_index, index_problem
from mhtag.index.meta import IndexMeta, current_meta
from mhtag.index.query import Filters, Query, Sort
from mhtag.index.store import DEFAULT_DB, Snapshot, coded_mask, open_table, snapshot, table_rows, version_key
from mhtag.results import AttributeInfo, Attributes, Health, SearchHit, SearchResult, ValueCount

MAX_FACET_VALUES = 200
NO_ATTRIBUTES = ("this index has no attributes yet: it holds embeddings only, so similar-image search works "
                 "(--like IMAGE) but no filter. Add labels (label rows in the gallery, or `mhtag labels import "
                 "CSV --db INDEX`), then train heads on them (`mhtag train --db INDEX`) and index with the run")
SEARCH_ENGINES = ("auto", "memory", "lance")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f" Did you mean {original!r}?"


def _pairs(filters: Filters | None) -> list[tuple[str, str]]:
    if isinstance(filters, dict):
        return [(name, value) for name, values in filters.items() for value in values]
    return list(filters or [])


def resolve_filters(meta: IndexMeta, filters: Filters | None) -> dict[str, list[str]]:
    """[("type", "dress"), ("type", "Skirt")] (or {"type": ["dress", "Skirt"]}) -> {"type": ["Dress", "Skirt"]}:
    names and values matched case-insensitively against the index; anything unknown is refused with the
    valid choices."""
    out: dict[str, list[str]] = {}
    names = [a.name for a in meta.attributes]
    if filters and not names:
        raise MhtagError(NO_ATTRIBUTES)
    for name, value in _pairs(filters):
        a = meta.find_attribute(str(name))
        if a is None:
            raise MhtagError(f"unknown attribute {name!r}; this index has: {', '.join(names)}."
                             f"{_did_you_mean(str(name), names)}")
        vocab = sorted(set(a.classes) | set(a.label_values))
        canonical = {v.lower(): v for v in vocab}
        if str(value).lower() not in canonical:
            shown = ", ".join(vocab[:40]) + (" ..." if len(vocab) > 40 else "")
            raise MhtagError(f"unknown value {value!r} for {a.name}; valid values: {shown}."
                             f"{_did_you_mean(str(value), vocab)}")
        values = out.setdefault(a.name, [])
        if canonical[str(value).lower()] not in values:
            values.append(canonical[str(value).lower()])
    return out


def _accepts(a: StoredAttribute, values: list[str]):
    """The test of one stored cell against the filter's values (tags are stored as |a|b|)."""
    if a.multi:
        wanted = [f"|{v}|" for v in values]
        return lambda cell: any(w in cell for w in wanted)
    allowed = set(values)
    return lambda cell: cell in allowed


def _matches(snap: Snapshot, column: str, a: StoredAttribute, values: list[str]) -> np.ndarray:
    return snap.values_in(column, _accepts(a, values))


def attribute_mask(snap: Snapshot, meta: IndexMeta, filters: dict[str, list[str]], source: Source = Source.ANY,
                   min_confidence: float | None = None) -> np.ndarray | None:
    """Rows passing the filters: AND over attributes, OR over one attribute's values (see `Source`).
    Values are compared as values: nothing is ever pasted into a query string."""
    mask: np.ndarray | None = None
    for name, values in filters.items():
        a = meta.attribute(name)
        if source is Source.ANY and min_confidence is None and a.has_labels and a.has_head:
            # the same rows as the label-or-prediction term below, in one pass over the answers' codes
            term = coded_mask(*_any_codes(snap, a), _accepts(a, values))
            mask = term if mask is None else mask & term
            continue

        def by_pred(a=a, values=values) -> np.ndarray:
            hit = _matches(snap, a.pred, a, values)
            return hit if min_confidence is None else hit & (snap.rows.column(a.conf).to_numpy() >= min_confidence)

        term = source_term(a, source, lambda a=a, values=values: _matches(snap, a.label, a, values), by_pred,
                           lambda a=a: snap.values_in(a.label, lambda cell: cell == ""), np.logical_or,
                           np.logical_and)
        mask = term if mask is None else mask & term
    return mask


def disputed_mask(snap: Snapshot, meta: IndexMeta, names: list[str] | None = None) -> np.ndarray:
    """Rows whose known label and head prediction differ on some attribute (of `names`, else any): the labels
    worth a human look, as `mhtag audit` ranks them."""
    both = [a for a in meta.attributes if a.has_head and a.has_labels and (not names or a.name in names)]
    mask = np.zeros(snap.rows.num_rows, dtype=bool)
    labels = {a.name: snap.rows.column(a.label).to_numpy(zero_copy_only=False) for a in meta.attributes
              if a.has_labels}
    # a tag group's empty label is "no tags" on a row that has labels, unknown on a row that has none
    labelled_row = np.logical_or.reduce([v != "" for v in labels.values()]) if labels else mask
    for a in both:
        label = labels[a.name]
        pred = snap.rows.column(a.pred).to_numpy(zero_copy_only=False)
        mask |= (labelled_row if a.multi else label != "") & (label != pred)
    return mask


def hits_of(rows: list[dict[str, Any]], scores, meta: IndexMeta) -> list[SearchHit]:
    """Search hits from table rows: per attribute the prediction and its confidence, the known label, and
    the answer (label where known, else prediction). Column names are resolved once, not per row."""
    views = [(a.name, a.pred if a.has_head else None, a.conf, a.label if a.has_labels else None, a.multi)
             for a in meta.attributes]
    texts = [(t, text_column(t)) for t in meta.text_columns]
    hits = []
    for row, score in zip(rows, scores, strict=True):
        out: dict[str, Any] = {"id": int(row["rid"]), "path": row["path"], "rel": row["rel"],
                               "score": round(float(score), 4)}
        for name, pred, conf, label, multi in views:
            known = predicted = ""
            if pred:
                predicted = row[pred]
                out[f"{name}_pred"] = decode_tags(predicted) if multi else predicted
                out[f"{name}_confidence"] = round(float(row[conf]), 4)
            if label:
                known = row[label]
                out[f"{name}_label"] = decode_tags(known) if multi else known
            answer = known or predicted or ""
            out[name] = decode_tags(answer) if multi else answer
        out |= {name: row.get(column) or "" for name, column in texts}
        hits.append(SearchHit.model_construct(**out))  # from the table's own typed columns: no validation needed
    return hits


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


def _user_where(db: Path, where: str) -> np.ndarray:
    """Row keys passing the user's own SQL, evaluated by LanceDB (the source of truth). Wrapped in parentheses,
    so that the parser must consume all of it: bare, trailing text after one expression is silently dropped."""
    q = open_table(db).search().select(["rid"]).limit(None).where(f"({check_where(where)})", prefilter=True)
    try:
        return q.to_arrow().column("rid").to_numpy()
    except (ValueError, RuntimeError, OSError) as exc:
        if index_problem(exc, db) is not None:
            raise
        raise MhtagError(f"--where {where!r} could not be evaluated: {str(exc).splitlines()[0][:300]}") from exc


def embed_query(meta: IndexMeta, db: Path, image: str | Path) -> np.ndarray:
    """The image's embedding under the index's own model."""
    from mhtag.index.predict import check_compatible  # here: only a query image needs torch loaded
    from mhtag.inference.encoder import load_encoder

    enc = load_encoder(meta.model_path, meta.backbone)
    check_compatible(meta, enc, db)
    batch = next(enc.encode_files([str(image)], workers=0))
    if batch.failed:
        raise MhtagError(f"{image}: {batch.failed[0][1]}")
    return batch.embeddings


def facet_counts(snap: Snapshot, meta: IndexMeta, rows: np.ndarray | None) -> dict[str, dict[str, int]]:
    """Per attribute, matched rows (a mask or positions; None: all) per value (the known label where there is
    one, else the prediction)."""
    out: dict[str, dict[str, int]] = {}
    positions = rows if rows is None or rows.dtype != bool else np.flatnonzero(rows)
    for a in meta.attributes:
        counts = np.zeros(0, dtype=np.int64)
        vocab: list[str] = []
        codes = _any_codes(snap, a)
        if codes is not None:
            codes, vocab = codes
            chosen = codes if positions is None else codes[positions]
            counts = np.bincount(chosen, minlength=len(vocab))
        tallies: dict[str, int] = {}
        for value, n in zip(vocab, counts.tolist(), strict=True):
            if n:
                for v in decode_tags(value) if a.multi else [value]:
                    if v:
                        tallies[v] = tallies.get(v, 0) + n
        out[a.name] = dict(sorted(tallies.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_FACET_VALUES])
    return out


def _any_codes(snap: Snapshot, a: StoredAttribute) -> tuple[np.ndarray, list[str]] | None:
    """Codes of the `any` answer per row: the known label where there is one, else the prediction."""
    key = f"any:{a.name}"
    if key not in snap.derived:
        label = snap.rows.column(a.label).to_numpy(zero_copy_only=False) if a.has_labels else None
        pred = snap.rows.column(a.pred).to_numpy(zero_copy_only=False) if a.has_head else None
        if label is None and pred is None:
            return None
        values = label if pred is None else pred if label is None else np.where(label != "", label, pred)
        vocab, codes = np.unique(values.astype(str), return_inverse=True)
        snap.derived[key] = (codes, vocab.tolist())
    return snap.derived[key]


@guard_index
def search(db: str | Path = DEFAULT_DB, query: Query | Filters | None = None, engine: str = "auto",
           **fields: Any) -> SearchResult:
    """The rows `query` asks for (a `Query`, or its filters with the other fields as keywords): rows matching every
    attribute filter (and its SQL `where`), ranked by similarity to an image, an indexed row or a vector if it
    names one, else by the confidence of the filtered predictions; `offset` skips that many ranked rows.

    `engine`: "memory" searches the in-memory snapshot (FAISS), "lance" LanceDB's own indexes without loading
    the table (see `index.ann`), "auto" the snapshot unless its vectors would take more than
    `memory_budget()` bytes."""
    q = Query.of(query, **fields)
    db = location(db)
    meta = current_meta(db)
    resolved = resolve_filters(meta, q.filters)
    version = version_key(db)  # one look at the table per search
    if choose_engine(db, meta, engine, version) == "lance":
        return _search_lance(db, meta, resolved, q)
    snap = snapshot(db, version, meta.dim)
    mask = attribute_mask(snap, meta, resolved, q.source, q.min_confidence)
    if q.disputed:
        doubt = disputed_mask(snap, meta, list(resolved))
        mask = doubt if mask is None else mask & doubt
    if q.where:
        passed = np.isin(snap.rows.column("rid").to_numpy(), _user_where(db, q.where))
        mask = passed if mask is None else mask & passed
    rows = None if mask is None else np.flatnonzero(mask)  # the matched rows' positions, once
    matched = snap.rows.num_rows if rows is None else len(rows)
    result = SearchResult(matched=matched, ranked_by=_ranked_by(q),
                          facets=facet_counts(snap, meta, rows) if q.facets else {})
    if matched <= q.offset:
        return result
    vector = q.vector
    if q.like is not None:
        vector = embed_query(meta, db, q.like)
    elif q.like_id is not None:
        pos = snap.position(q.like_id)
        if pos is None:
            raise NotFoundError(f"no row with id {q.like_id} in index {db}")
        vector = snap.vectors.at(pos)[0]
    if vector is not None and q.ranking is Sort.SIMILARITY:
        top, top_scores = _nearest(snap, meta, db, vector, q.offset + q.limit, rows)
    else:
        top, top_scores = _ordered(snap, meta, resolved, rows, q, q.offset + q.limit)
    top, top_scores = top[q.offset:], top_scores[q.offset:]
    taken = _hit_columns(snap, meta).take(pa.array(top, type=pa.int64())).to_pydict()  # columns: cheaper
    shown = [dict(zip(taken, values, strict=True)) for values in zip(*taken.values(), strict=True)]
    result.results = hits_of(shown, top_scores, meta)
    return result


def _ranked_by(q: Query) -> str:
    return q.ranking.value


def _hit_columns(snap: Snapshot, meta: IndexMeta) -> pa.Table:
    """The snapshot's columns that a hit shows (a take of these is cheaper than of every column)."""
    names = ["rid", "path", "rel"] + [c for a in meta.attributes
                                      for c in ([a.pred, a.conf] if a.has_head else []) +
                                      ([a.label] if a.has_labels else [])] + [text_column(t) for t in meta.text_columns]
    key = "hit columns:" + ",".join(names)
    if key not in snap.derived:
        snap.derived[key] = snap.rows.select(names)
    return snap.derived[key]


def count_matches(db: Path, sql: str | None, where: str | None) -> int:
    """Rows passing `sql` (the filters' SQL, with the user's `where` in it), counted by LanceDB."""
    try:
        return ann.count(db, sql)
    except (ValueError, RuntimeError, OSError) as exc:
        if where is None or index_problem(exc, db) is not None:  # the table, not the user's SQL
            raise
        raise MhtagError(f"--where {where!r} could not be evaluated: {str(exc).splitlines()[0][:300]}") from exc


def _search_lance(db: Path, meta: IndexMeta, resolved: dict[str, list[str]], q: Query) -> SearchResult:
    sql = ann.all_of(ann.filter_sql(meta, resolved, q.source, q.min_confidence, q.disputed),
                     check_where(q.where) if q.where else None)
    matched = count_matches(db, sql, q.where)
    result = SearchResult(matched=matched, ranked_by=_ranked_by(q),
                          facets=ann.facets(db, meta, sql, MAX_FACET_VALUES) if q.facets else {})
    if matched <= q.offset:
        return result
    vector = q.vector
    if q.like is not None:
        vector = embed_query(meta, db, q.like)
    elif q.like_id is not None:
        vector = ann.vector_of(db, q.like_id)
        if vector is None:
            raise NotFoundError(f"no row with id {q.like_id} in index {db}")
    n = q.offset + q.limit
    if vector is not None and q.ranking is Sort.SIMILARITY:
        rows, scores = ann.nearest(db, _query_vector(meta, db, vector), n, sql, matched)
    else:
        names = q.sort_columns([a.conf for a in _ranking_heads(meta, resolved)])
        rows, scores = ann.ranked(db, names, n, sql, lambda scan: q.order(
            {c: scan.column(c).to_numpy(zero_copy_only=False) for c in names}))
    result.results = hits_of(rows[q.offset:], scores[q.offset:], meta)
    return result


def memory_budget() -> int:
    """Bytes of vectors the in-memory engine may hold: MHTAG_MEMORY_ENGINE_BYTES, else a quarter of the RAM."""
    configured = os.environ.get("MHTAG_MEMORY_ENGINE_BYTES")
    if configured:
        return int(configured)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def choose_engine(db: Path, meta: IndexMeta, engine: str = "auto", version: tuple[int, int] | None = None) -> str:
    if engine not in SEARCH_ENGINES:
        raise MhtagError(f"engine must be one of {', '.join(SEARCH_ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    return "lance" if table_rows(db, version) * meta.dim * 4 > memory_budget() else "memory"


def _query_vector(meta: IndexMeta, db: Path, vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if vector.shape[1] != meta.dim:
        raise MhtagError(f"query vector has {vector.shape[1]} dimensions; index {db} has {meta.dim}")
    return vector


def _ranking_heads(meta: IndexMeta, resolved: dict[str, list[str]]) -> list[StoredAttribute]:
    """Rows without a query image rank by the mean confidence of the filtered heads (or of every head)."""
    return [meta.attribute(k) for k in resolved if meta.attribute(k).has_head] or \
        [a for a in meta.attributes if a.has_head]


def _nearest(snap: Snapshot, meta: IndexMeta, db: Path, vector: np.ndarray, n: int, rows: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray]:
    scores, pos = snap.vectors.search(_query_vector(meta, db, vector), n, rows)
    keep = pos[0] >= 0
    return pos[0][keep], scores[0][keep]


def _ordered(snap: Snapshot, meta: IndexMeta, resolved: dict[str, list[str]], rows: np.ndarray | None,
             q: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` matched rows (positions, in table order; None: all) in the query's order (`Query.order`)."""
    positions = np.arange(snap.rows.num_rows) if rows is None else rows
    names = q.sort_columns([a.conf for a in _ranking_heads(meta, resolved)])
    order, score = q.order({c: snap.rows.column(c).to_numpy(zero_copy_only=False)[positions] for c in names})
    return positions[order[:n]], score[:n]


def warm(db: str | Path = DEFAULT_DB) -> None:
    """Builds now what the first searches would otherwise build: the snapshot, the value codes of every
    attribute column, the facets' answer codes and the row-id lookup (a server calls it before it listens)."""
    meta = current_meta(db)
    snap = snapshot(db)
    for a in meta.attributes:
        for column in ([a.label] if a.has_labels else []) + ([a.pred] if a.has_head else []):
            snap.codes(column)
    facet_counts(snap, meta, None)
    snap.position(0)


@guard_index
def index_attributes(db: str | Path = DEFAULT_DB) -> Attributes:
    """Every attribute with its values and their counts over the whole index (label where known, else
    prediction); values known to the index but on no row are listed with 0."""
    db = location(db)
    meta = current_meta(db)
    counts = facet_counts(snapshot(db), meta, None)
    out = []
    for a in meta.attributes:
        seen = counts.get(a.name, {})
        rest = sorted((set(a.classes) | set(a.label_values)) - set(seen))
        values = [ValueCount(value=v, count=n) for v, n in seen.items()] + \
            [ValueCount(value=v, count=0) for v in rest if v not in seen]
        out.append(AttributeInfo(name=a.name, kind=str(a.kind), has_head=a.has_head, has_labels=a.has_labels,
                                 values=values))
    return Attributes(attributes=out, texts=list(meta.text_columns))


@guard_index
def index_health(db: str | Path = DEFAULT_DB) -> Health:
    db = location(db)
    meta = current_meta(db)
    snap = snapshot(db)
    return Health(rows=snap.rows.num_rows, model=meta.model_path, backbone=meta.backbone, version=snap.version,
                  label_changes=meta.label_changes,
                  changes_since_model=max(0, meta.labels_applied - meta.model_labels) if meta.model_path else 0)
