"""Attribute search over an index: filter by any attribute (known labels, predictions or either), optionally
ranked by similarity to an image. Attribute filters are evaluated on the in-memory snapshot of the table by
comparing values: a user's value is never pasted into SQL (`--where` is the user's own SQL, run by LanceDB).
The filter runs first, then the nearest-neighbour step over the rows that passed, so `limit` rows come back
whenever at least that many match."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mhtag.errors import MhtagError
from mhtag.predict import check_compatible, encode_files, load_encoder
from mhtag.store import (
    DEFAULT_DB,
    IndexMeta,
    Snapshot,
    StoredAttribute,
    decode_tags,
    open_table,
    require_meta,
    snapshot,
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


def _matches(snap: Snapshot, column: str, a: StoredAttribute, values: list[str]) -> np.ndarray:
    if a.kind == "multi":  # tags are stored as |a|b|
        wanted = [f"|{v}|" for v in values]
        return snap.values_in(column, lambda cell: any(w in cell for w in wanted))
    allowed = set(values)
    return snap.values_in(column, lambda cell: cell in allowed)


def attribute_mask(snap: Snapshot, meta: IndexMeta, filters: dict[str, list[str]], source: str = "any",
                   min_confidence: float | None = None) -> np.ndarray | None:
    """Rows passing the filters: AND over attributes, OR over one attribute's values. `label`: known labels
    only; `pred`: predictions (at least `min_confidence`); `any`: the known label where there is one, else
    the prediction. Values are compared as values: nothing is ever pasted into a query string."""
    if source not in SOURCES:
        raise MhtagError(f"--source must be one of {', '.join(SOURCES)}, not {source!r}")
    mask: np.ndarray | None = None
    for name, values in filters.items():
        a = meta.attribute(name)
        by_label = _matches(snap, f"label_{a.column}", a, values) if a.has_labels else None
        by_pred = _matches(snap, f"pred_{a.column}", a, values) if a.has_head else None
        if by_pred is not None and min_confidence is not None:
            by_pred &= snap.rows.column(f"conf_{a.column}").to_numpy() >= float(min_confidence)
        if source == "label":
            if by_label is None:
                raise MhtagError(f"{a.name} has no known labels in this index; use --source pred or any")
            term = by_label
        elif source == "pred":
            if by_pred is None:
                raise MhtagError(f"{a.name} has no predictions in this index (no head); use --source label or any")
            term = by_pred
        elif by_label is not None and by_pred is not None:
            term = by_label | (snap.values_in(f"label_{a.column}", lambda cell: cell == "") & by_pred)
        else:
            term = by_label if by_label is not None else by_pred
        mask = term if mask is None else mask & term
    return mask


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


def _user_where(db: Path, where: str) -> np.ndarray:
    """Row keys passing the user's own SQL, evaluated by LanceDB (the source of truth)."""
    q = open_table(db).search().select(["rid"]).limit(None).where(where, prefilter=True)
    try:
        return q.to_arrow().column("rid").to_numpy()
    except (ValueError, RuntimeError) as exc:
        raise MhtagError(f"--where {where!r} could not be evaluated: {str(exc).splitlines()[0]}") from exc


def embed_query(meta: IndexMeta, db: Path, image: str | Path) -> np.ndarray:
    """The image's embedding under the index's own model."""
    enc = load_encoder(meta.model_path, meta.backbone)
    check_compatible(meta, enc, db)
    feats, _, _, bad = next(encode_files(enc, [str(image)], workers=0))
    if bad:
        raise MhtagError(f"{image}: {bad[0][1]}")
    return feats


def search(db: str | Path = DEFAULT_DB, filters: list[tuple[str, str]] | None = None, where: str | None = None,
           like: str | Path | None = None, limit: int = 20, min_confidence: float | None = None,
           source: str = "any", vector: np.ndarray | None = None) -> SearchResult:
    """Rows matching every attribute filter (and `where`), ranked by similarity to the image `like` (or to an
    embedding `vector` of the index's model) if given, else by the confidence of the filtered predictions."""
    db = Path(db)
    meta = require_meta(db)
    snap = snapshot(db)
    resolved = resolve_filters(meta, filters or [])
    mask = attribute_mask(snap, meta, resolved, source, min_confidence)
    if where:
        passed = np.isin(snap.rows.column("rid").to_numpy(), _user_where(db, where))
        mask = passed if mask is None else mask & passed
    matched = snap.rows.num_rows if mask is None else int(mask.sum())
    if matched == 0 or limit <= 0:
        return SearchResult(matched, [])
    if like is not None:
        vector = embed_query(meta, db, like)
    if vector is not None:
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != meta.dim:
            raise MhtagError(f"query vector has {vector.shape[1]} dimensions; index {db} has {meta.dim}")
        scores, pos = snap.vectors.search(vector, limit, mask)
        keep = pos[0] >= 0
        top, top_scores = pos[0][keep], scores[0][keep]
    else:
        ranked_by = [meta.attribute(n) for n in resolved if meta.attribute(n).has_head] or \
            [a for a in meta.attributes if a.has_head]  # no prediction filtered: how sure the heads are overall
        positions = np.arange(snap.rows.num_rows) if mask is None else np.flatnonzero(mask)
        score = np.mean([snap.rows.column(f"conf_{a.column}").to_numpy()[positions] for a in ranked_by], axis=0) \
            if ranked_by else np.zeros(len(positions))
        order = np.lexsort((positions, -score))[:limit]  # by confidence, ties in table order
        top, top_scores = positions[order], score[order]
    shown = snap.rows.take(pa.array(top)).to_pylist()
    return SearchResult(matched, [_row_view(r, meta, s) for r, s in zip(shown, top_scores, strict=True)])
