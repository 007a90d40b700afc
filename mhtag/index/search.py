"""Attribute search over an index: filter by any attribute (known labels, predictions or either), optionally
ranked by similarity to an image, a row or a vector. `search` resolves the query against the index's vocabulary,
an `Engine` (`index.engine`) answers it, and its rows become `SearchHit`s here, alike for every engine."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np

from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.storage import location
from mhtag.data.schema import decode_tags
from mhtag.index.columns import text_column
from mhtag.index.engine import Engine, Resolved, choose_engine
from mhtag.index.guard import guard_index
from mhtag.index.lancedb_engine import LanceEngine
from mhtag.index.memory import MemoryEngine
from mhtag.index.memory import warm as warm_memory
from mhtag.index.meta import IndexMeta, current_meta
from mhtag.index.query import Filters, Query, Sort
from mhtag.index.store import DEFAULT_DB, version_key
from mhtag.results import SearchHit, SearchResult

NO_ATTRIBUTES = ("this index has no attributes yet: it holds embeddings only, so similar-image search works "
                 "(--like IMAGE) but no filter. Add labels (label rows in the gallery, or `mhtag labels import "
                 "CSV --db INDEX`), then train heads on them (`mhtag train --db INDEX`) and index with the run")


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


def text_query(meta: IndexMeta, text: str) -> np.ndarray:
    """A sentence as a query vector, through the text tower kept with the index's model."""
    from mhtag.inference.words import require_tower, text_vector  # here: a text query needs torch loaded

    return text_vector(require_tower(meta.model_path, "a text query"), text, meta.dim)


def open_engine(r: Resolved, engine: str = "auto", version: tuple[int, int] | None = None) -> Engine:
    """The engine that answers `r`: the user's choice, or `choose_engine`'s."""
    if choose_engine(r.db, r.meta, engine, version) == "lance":
        return LanceEngine(r)
    return MemoryEngine(r, version)


@guard_index
def search(db: str | Path = DEFAULT_DB, query: Query | Filters | None = None, engine: str = "auto",
           **fields: Any) -> SearchResult:
    """The rows `query` asks for (a `Query`, or its filters with the other fields as keywords): rows matching every
    attribute filter (and its SQL `where`), ranked by similarity to an image, an indexed row or a vector if it
    names one, else in the query's order; `offset` skips that many ranked rows.

    `engine`: "memory" searches the table's snapshot and its persisted vectors, "lance" LanceDB's own indexes
    without loading the table (see `index.lancedb_engine`), "auto" the former unless its vectors would take more
    than `memory_budget()` bytes."""
    q = Query.of(query, **fields)
    db = location(db)
    meta = current_meta(db)
    r = Resolved(db, meta, q, resolve_filters(meta, q.filters))
    answers = open_engine(r, engine, version_key(db))  # one look at the table per search
    matched = answers.count()
    result = SearchResult(matched=matched, ranked_by=q.ranking.value, facets=answers.facets() if q.facets else {})
    if matched <= q.offset:
        return result
    vector = q.vector
    if q.like is not None:
        vector = embed_query(meta, db, q.like)
    elif q.like_id is not None:
        vector = answers.vector_of(q.like_id)
        if vector is None:
            raise NotFoundError(f"no row with id {q.like_id} in index {db}")
    elif q.text is not None:
        vector = text_query(meta, q.text)
    n = q.offset + q.limit
    rows, scores = answers.nearest(vector, n) if vector is not None and q.ranking is Sort.SIMILARITY \
        else answers.rank(n)
    result.results = hits_of(rows[q.offset:], scores[q.offset:], meta)
    return result


def warm(db: str | Path = DEFAULT_DB) -> None:
    """What the first searches would otherwise build, built now (a server calls it before it listens)."""
    warm_memory(db, current_meta(db))
