"""Attribute search over an index: filter by any attribute (known labels, predictions or either), optionally
ranked by similarity to an image. Filters are built as typed LanceDB expressions: a user's value is only
ever a literal, never pasted into SQL. The filter runs first, then the nearest-neighbour step over the rows
that passed, so `limit` rows come back whenever at least that many match."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from lancedb.expr import Expr, col, lit

from mhtag.errors import MhtagError
from mhtag.predict import check_compatible, encode_files, load_encoder
from mhtag.store import (
    DEFAULT_DB,
    IndexMeta,
    StoredAttribute,
    VectorIndex,
    decode_tags,
    open_table,
    read_columns,
    require_meta,
    vectors_of,
)

SOURCES = ("label", "pred", "any")


@dataclass
class SearchResult:
    matched: int
    results: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "results": self.results}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f" Did you mean {original!r}?"


def resolve_filters(meta: IndexMeta, pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """[("type", "dress"), ("type", "Skirt")] -> {"type": ["Dress", "Skirt"]}: names and values matched
    case-insensitively against the index; anything unknown is refused with the valid choices."""
    out: dict[str, list[str]] = {}
    names = [a.name for a in meta.attributes]
    for name, value in pairs:
        a = meta.find_attribute(name)
        if a is None:
            raise MhtagError(f"unknown attribute {name!r}; this index has: {', '.join(names)}."
                             f"{_did_you_mean(name, names)}")
        vocab = sorted(set(a.classes) | set(a.label_values))
        canonical = {v.lower(): v for v in vocab}
        if value.lower() not in canonical:
            shown = ", ".join(vocab[:40]) + (" ..." if len(vocab) > 40 else "")
            raise MhtagError(f"unknown value {value!r} for {a.name}; valid values: {shown}."
                             f"{_did_you_mean(value, vocab)}")
        values = out.setdefault(a.name, [])
        if canonical[value.lower()] not in values:
            values.append(canonical[value.lower()])
    return out


def _matches(column: str, a: StoredAttribute, values: list[str]) -> Expr:
    if a.kind == "multi":  # tags are stored as |a|b|: one tag is a substring test on |tag|
        expr = col(column).contains(f"|{values[0]}|")
        for v in values[1:]:
            expr = expr | col(column).contains(f"|{v}|")
        return expr
    return col(column).isin(values)


def attribute_filter(meta: IndexMeta, filters: dict[str, list[str]], source: str = "any",
                     min_confidence: float | None = None) -> Expr | None:
    """AND over attributes, OR over one attribute's values. `label`: known labels only; `pred`: predictions
    (at least `min_confidence`); `any`: the known label where there is one, else the prediction."""
    if source not in SOURCES:
        raise MhtagError(f"--source must be one of {', '.join(SOURCES)}, not {source!r}")
    expr: Expr | None = None
    for name, values in filters.items():
        a = meta.attribute(name)
        by_label = _matches(f"label_{a.column}", a, values) if a.has_labels else None
        by_pred = _matches(f"pred_{a.column}", a, values) if a.has_head else None
        if by_pred is not None and min_confidence is not None:
            by_pred = by_pred & (col(f"conf_{a.column}") >= lit(float(min_confidence)))
        if source == "label":
            if by_label is None:
                raise MhtagError(f"{a.name} has no known labels in this index; use --source pred or any")
            term = by_label
        elif source == "pred":
            if by_pred is None:
                raise MhtagError(f"{a.name} has no predictions in this index (no head); use --source label or any")
            term = by_pred
        elif by_label is not None and by_pred is not None:
            term = by_label | ((col(f"label_{a.column}") == lit("")) & by_pred)
        else:
            term = by_label if by_label is not None else by_pred
        expr = term if expr is None else expr & term
    return expr


@lru_cache(maxsize=2)
def _vector_index(db: str, version: int, dim: int) -> VectorIndex:
    arrow = read_columns(open_table(db), ["rid", "vector"])
    return VectorIndex(vectors_of(arrow, dim), arrow.column("rid").to_numpy())


def vector_index(db: str | Path) -> VectorIndex:
    """The FAISS index of every row, rebuilt only when the table has changed since it was last built."""
    meta = require_meta(db)
    return _vector_index(str(db), open_table(db).version, meta.dim)


def _row_view(row: dict[str, Any], meta: IndexMeta, score: float) -> dict[str, Any]:
    out: dict[str, Any] = {"path": row["path"], "score": round(float(score), 4)}
    for a in meta.attributes:
        label = row.get(f"label_{a.column}", "") if a.has_labels else ""
        pred = row.get(f"pred_{a.column}", "") if a.has_head else ""
        if a.kind == "multi":
            label, pred = decode_tags(label), decode_tags(pred)
        if a.has_head:
            out[f"{a.name}_pred"] = pred
            out[f"{a.name}_confidence"] = round(float(row[f"conf_{a.column}"]), 4)
        if a.has_labels:
            out[f"{a.name}_label"] = label
        out[a.name] = label if label else pred
    return out


def _display_columns(meta: IndexMeta) -> list[str]:
    cols = ["rid", "path"]
    for a in meta.attributes:
        if a.has_head:
            cols += [f"pred_{a.column}", f"conf_{a.column}"]
        if a.has_labels:
            cols.append(f"label_{a.column}")
    return cols


def _where(table, expr: Expr | None, where: str | None, columns: list[str]):
    q = table.search().select(columns).limit(None)
    if expr is not None:
        q = q.where(expr, prefilter=True)
    if where:
        q = q.where(where, prefilter=True)  # the user's own SQL, ANDed with the attribute filters
    try:
        return q.to_arrow()
    except (ValueError, RuntimeError) as exc:
        raise MhtagError(f"--where {where!r} could not be evaluated: {str(exc).splitlines()[0]}") from exc


def search(db: str | Path = DEFAULT_DB, filters: list[tuple[str, str]] | None = None, where: str | None = None,
           like: str | Path | None = None, limit: int = 20, min_confidence: float | None = None,
           source: str = "any") -> SearchResult:
    """Rows matching every attribute filter (and `where`), ranked by similarity to `like` if given, else by
    the confidence of the filtered predictions."""
    db = Path(db)
    meta = require_meta(db)
    table = open_table(db)
    resolved = resolve_filters(meta, filters or [])
    expr = attribute_filter(meta, resolved, source, min_confidence)
    conf_cols = [f"conf_{meta.attribute(n).column}" for n in resolved if meta.attribute(n).has_head]
    matched = _where(table, expr, where, ["rid", *conf_cols])
    rids = matched.column("rid").to_numpy()
    if len(rids) == 0 or limit <= 0:
        return SearchResult(len(rids), [])
    if like is not None:
        enc = load_encoder(meta.model_path, meta.backbone)
        check_compatible(meta, enc, db)
        feats, _, ok, bad = next(encode_files(enc, [str(like)], workers=0))
        if bad:
            raise MhtagError(f"{like}: {bad[0][1]}")
        vi = vector_index(db)
        positions = None if expr is None and not where else vi.positions_of(rids)
        scores, pos = vi.search(feats, limit, positions)
        keep = pos[0] >= 0
        top_rids, top_scores = vi.rids[pos[0][keep]], scores[0][keep]
    else:
        score = np.mean([matched.column(c).to_numpy() for c in conf_cols], axis=0) if conf_cols else \
            np.zeros(len(rids))
        order = np.lexsort((rids, -score))[:limit]  # by confidence, ties in a stable order
        top_rids, top_scores = rids[order], score[order]
    rows = read_columns(table, _display_columns(meta), col("rid").isin(top_rids.tolist())).to_pylist()
    by_rid = {r["rid"]: r for r in rows}
    return SearchResult(len(rids), [_row_view(by_rid[r], meta, s) for r, s in zip(top_rids, top_scores, strict=True)
                                    if r in by_rid])
