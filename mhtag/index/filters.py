"""What an attribute filter means, once for every engine: the in-memory snapshot combines boolean masks, LanceDB
combines SQL terms, both through `source_term`."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from mhtag.core.errors import MhtagError
from mhtag.index.columns import StoredAttribute

T = TypeVar("T")


class Source(str, Enum):
    LABEL = "label"  # known labels only
    PRED = "pred"  # predictions only
    ANY = "any"  # the known label where there is one, else the prediction


def source_term(a: StoredAttribute, source: Source, by_label: Callable[[], T], by_pred: Callable[[], T],
                label_blank: Callable[[], T], either: Callable[[T, T], T], both: Callable[[T, T], T]) -> T:
    """One attribute's filter under `source`, in any algebra: `by_label`/`by_pred` are the terms "the label /
    prediction has one of the values", `label_blank` "no known label"; `either`/`both` are OR and AND."""
    source = Source(source)
    if source is Source.LABEL:
        if not a.has_labels:
            raise MhtagError(f"{a.name} has no known labels in this index; use source pred or any")
        return by_label()
    if source is Source.PRED:
        if not a.has_head:
            raise MhtagError(f"{a.name} has no predictions in this index (no head); use source label or any")
        return by_pred()
    if a.has_labels and a.has_head:
        return either(by_label(), both(label_blank(), by_pred()))
    return by_label() if a.has_labels else by_pred()
