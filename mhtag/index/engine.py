"""One interface over the two search engines. A search is resolved once (`Resolved`: the `Query` with its filters
mapped onto the index's vocabulary), then answered by an `Engine`: the in-memory one (`index.memory`: the table's
snapshot and its persisted vectors) or LanceDB's own (`index.lancedb_engine`: nothing loaded whole, for tables
past RAM or on object storage). What a hit is, how facet values are tallied and how rows rank without a query
vector are defined here or in `Query`, once for both; how a filter selects rows is `index.filters.source_term` in
two algebras, kept equal by a property test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mhtag.core.errors import MhtagError
from mhtag.data.schema import decode_tags
from mhtag.index.columns import StoredAttribute
from mhtag.index.meta import IndexMeta
from mhtag.index.query import Query
from mhtag.index.store import table_rows

MAX_FACET_VALUES = 200
SEARCH_ENGINES = ("auto", "memory", "lance")


@dataclass
class Resolved:
    """A query as an engine answers it: the `Query`, and its filters with names and values as the index spells
    them."""

    db: Path
    meta: IndexMeta
    query: Query
    filters: dict[str, list[str]]

    def ranking_heads(self) -> list[StoredAttribute]:
        """Rows without a query vector rank by the mean confidence of the filtered heads (or of every head)."""
        meta = self.meta
        return [meta.attribute(k) for k in self.filters if meta.attribute(k).has_head] or \
            [a for a in meta.attributes if a.has_head]

    def sort_columns(self) -> list[str]:
        return self.query.sort_columns([a.conf for a in self.ranking_heads()])


class Engine(Protocol):
    """What every engine answers for one resolved query: the matched rows' count and facets, the `n` nearest to
    a vector, the first `n` in the query's order, and an indexed row's vector. Rows come back as dicts of the
    table's columns (no vectors or probabilities), with their scores."""

    def count(self) -> int: ...

    def facets(self) -> dict[str, dict[str, int]]: ...

    def nearest(self, vector: np.ndarray, n: int) -> tuple[list[dict[str, Any]], np.ndarray]: ...

    def rank(self, n: int) -> tuple[list[dict[str, Any]], np.ndarray]: ...

    def vector_of(self, rid: int) -> np.ndarray | None: ...


def tally(a: StoredAttribute, values: list[str], counts: list[int], top: int = MAX_FACET_VALUES) -> dict[str, int]:
    """One attribute's facet: rows per value from (stored value, rows) pairs, a tag group's cells split into
    their tags; most rows first, then A-Z."""
    out: dict[str, int] = {}
    for value, n in zip(values, counts, strict=True):
        if n:
            for v in decode_tags(value) if a.multi else [value]:
                if v:
                    out[v] = out.get(v, 0) + int(n)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:top])


def query_vector(meta: IndexMeta, db: Path, vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if vector.shape[1] != meta.dim:
        raise MhtagError(f"query vector has {vector.shape[1]} dimensions; index {db} has {meta.dim}")
    return vector


def memory_budget() -> int:
    """Bytes of stored (float16) vectors up to which "auto" picks the memory engine: MHTAG_MEMORY_ENGINE_BYTES, else
    half the RAM. The vectors are memory-mapped, so it is the page cache that holds them: 10M x 512 rows (9.8 GB)
    answered at p99 <= 60 ms on a 24 GB machine (benchmarks/results/search_engines_10m.json)."""
    configured = os.environ.get("MHTAG_MEMORY_ENGINE_BYTES")
    if configured:
        return int(configured)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def choose_engine(db: Path, meta: IndexMeta, engine: str = "auto", version: tuple[int, int] | None = None) -> str:
    """"memory" or "lance": the user's choice, or for "auto" the memory engine unless the vectors it keeps
    (float16 past the exact threshold) would take more than `memory_budget()` bytes."""
    if engine not in SEARCH_ENGINES:
        raise MhtagError(f"engine must be one of {', '.join(SEARCH_ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    return "lance" if table_rows(db, version) * meta.dim * 2 > memory_budget() else "memory"
