"""One description of a search, built alike by the CLI, the API and Python, and answered by either engine: which
rows (attribute filters over known labels and predictions, a confidence floor, disputed rows, the user's own SQL),
how they rank (by similarity to an image, an indexed row or a vector; else by the filtered heads' confidence),
which page, and whether to count facets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from mhtag.core.errors import MhtagError
from mhtag.index.filters import Source

Filters = dict[str, list[str]] | list[tuple[str, str]]  # {"colour": ["red", "blue"]} or [("colour", "red"), ...]


class Sort(str, Enum):
    """How results rank: each hit's `score` is this (the result's `ranked_by` says which)."""

    AUTO = "auto"  # similarity where the query names an image, a row or a vector; else confidence
    SIMILARITY = "similarity"  # cosine to the query image, row or vector, highest first
    CONFIDENCE = "confidence"  # the mean confidence of the filtered heads' predictions, highest first
    PATH = "path"  # the path under the indexed folder, A-Z (score 0)
    CHANGED = "changed"  # the last change of a label by a person, newest first (score: its UNIX time)


@dataclass
class Query:
    filters: Filters = field(default_factory=dict)  # OR within an attribute, AND across attributes
    source: Source = Source.ANY  # which answer a filter reads: known labels, predictions, or a label where known
    min_confidence: float | None = None  # predictions below it do not pass a filter
    disputed: bool = False  # only rows whose known label and prediction differ (on the filtered attributes, if any)
    where: str | None = None  # SQL of the user's own over the index's columns, ANDed with the rest
    like: str | Path | None = None  # rank by similarity to this image file
    like_id: int | None = None  # ... to this indexed row
    vector: np.ndarray | None = None  # ... to this embedding (of the index's model)
    text: str | None = None  # ... to this sentence (through the text tower kept with the index's model)
    limit: int = 20
    offset: int = 0
    facets: bool = False  # count the matched rows per attribute value
    sort: Sort = Sort.AUTO

    def __post_init__(self) -> None:
        self.source = Source(self.source)
        self.sort = Sort(self.sort)
        if self.sort is Sort.SIMILARITY and not self.ranks_by_similarity:
            raise MhtagError("sort by similarity needs something to be similar to: an image, a row, a vector or a text")
        if self.limit < 1:
            raise MhtagError(f"limit must be at least 1, not {self.limit}")
        if self.offset < 0:
            raise MhtagError(f"offset must be 0 or more, not {self.offset}")
        if self.min_confidence is not None and not (math.isfinite(self.min_confidence)
                                                    and 0 <= self.min_confidence <= 1):
            raise MhtagError(f"min_confidence must be between 0 and 1, not {self.min_confidence}")
        if sum(x is not None for x in (self.like, self.like_id, self.vector, self.text)) > 1:
            raise MhtagError("rank by one thing: an image (like), an indexed row (like_id), a vector or a text")

    @classmethod
    def of(cls, query: Query | Filters | None = None, **fields: Any) -> Query:
        """A Query from a Query (with `fields` changed), or from filters and fields."""
        if isinstance(query, Query):
            return replace(query, **fields)
        return cls(**({"filters": query} if query is not None else {}), **fields)

    @property
    def ranks_by_similarity(self) -> bool:
        return any(x is not None for x in (self.like, self.like_id, self.vector, self.text))

    def sort_columns(self, confidences: list[str]) -> list[str]:
        """The columns a ranking other than similarity reads (`confidences`: the ranked heads' columns)."""
        return {Sort.PATH: ["rel"], Sort.CHANGED: ["changed_ns"]}.get(self.ranking, confidences)

    def order(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ranked order, their scores) of rows given as `columns` (those of `sort_columns`), ties in
        the rows' own order: what a ranking other than similarity means, for every engine."""
        n = len(next(iter(columns.values()))) if columns else 0
        tie = np.arange(n)
        if self.ranking is Sort.PATH:
            order = np.argsort(np.asarray(columns["rel"], dtype=object), kind="stable")
            return order, np.zeros(n)
        if self.ranking is Sort.CHANGED:
            changed = np.asarray(columns["changed_ns"], dtype=np.int64)
            order = np.lexsort((tie, -changed))
            return order, changed[order] / 1e9
        score = np.mean([np.asarray(v, dtype=np.float64) for v in columns.values()], axis=0) if columns \
            else np.zeros(n)
        order = np.lexsort((tie, -score))
        return order, score[order]

    @property
    def ranking(self) -> Sort:
        """The sort, AUTO resolved."""
        if self.sort is not Sort.AUTO:
            return self.sort
        return Sort.SIMILARITY if self.ranks_by_similarity else Sort.CONFIDENCE
