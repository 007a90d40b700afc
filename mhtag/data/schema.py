"""The label schema: attribute kinds, the tag codec, and the per-attribute vocabularies learned from data."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from mhtag.core.errors import MhtagError

MISSING, UNKNOWN = -1, -2  # target codes for a blank cell and a label outside the vocabulary
OTHER = "other"
TAG_SEP = "|"


class AttributeKind(str, Enum):
    SINGLE = "single"  # one class per image: softmax + cross-entropy
    MULTI = "multi"  # a group of tags: sigmoid + binary cross-entropy per tag

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------- the tag codec
# In a CSV cell a tag group is `a|b`; in an index column it is `|a|b|`, so that one tag is a substring match.


def is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def split_tags(v: Any) -> list[str]:
    """`"a| b"` -> ["a", "b"]; a blank cell has no tags."""
    return [] if is_blank(v) else [t.strip() for t in str(v).split(TAG_SEP) if t.strip()]


def encode_tags(tags: list[str]) -> str:
    """Tags as a stored cell: `|a|b|` (so that `tag_token` finds exactly one tag), or "" for none."""
    return TAG_SEP + TAG_SEP.join(tags) + TAG_SEP if tags else ""


def decode_tags(value: str | None) -> list[str]:
    """A stored cell's tags: `|a|b|` -> ["a", "b"]."""
    return [t for t in (value or "").split(TAG_SEP) if t]


def tag_token(tag: str) -> str:
    """What a stored cell holding `tag` contains: `|tag|`."""
    return TAG_SEP + tag + TAG_SEP


def join_tags(tags: list[str]) -> str:
    """Tags as a labels CSV (and every display) writes them: `a|b`."""
    return TAG_SEP.join(tags)


def value_counts(col: pd.Series, kind: AttributeKind) -> dict[str, int]:
    if kind is AttributeKind.MULTI:
        values = [t for v in col for t in split_tags(v)]
    else:
        values = [str(v).strip() for v in col if not is_blank(v)]
    return pd.Series(values, dtype=object).value_counts().to_dict() if values else {}


# ---------------------------------------------------------------- attributes


@dataclass
class AttributeSpec:
    """What every stage knows of an attribute: its name, kind and (when a head exists) its classes."""

    name: str
    kind: AttributeKind
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = AttributeKind(self.kind)

    @property
    def multi(self) -> bool:
        return self.kind is AttributeKind.MULTI

    @property
    def num_outputs(self) -> int:
        return len(self.classes)


@dataclass
class Attribute(AttributeSpec):
    """A trained head's attribute: its vocabulary with training counts."""

    counts: list[int] = field(default_factory=list)  # training rows per class (multi: per tag)
    merged: list[str] = field(default_factory=list)  # rare classes folded into "other" (models trained with min_count)


@dataclass
class LabelSchema:
    attributes: list[Attribute]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __getitem__(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version,
                "attributes": [{**asdict(a), "kind": a.kind.value} for a in self.attributes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSchema:
        return cls([Attribute(**a) for a in d["attributes"]])

    @property
    def version(self) -> str:
        """Content hash of the vocabularies: two models agree on labels iff their versions match."""
        body = [[a.name, a.kind.value, a.classes, a.merged] for a in self.attributes]
        return hashlib.sha1(json.dumps(body).encode()).hexdigest()[:12]

    @classmethod
    def fit(cls, frame: pd.DataFrame, attributes: list[str], multilabel: set[str]
            ) -> tuple[LabelSchema, dict[str, str]]:
        """Vocabularies from the training rows; returns the schema and {attribute: why it was dropped}."""
        attrs, dropped = [], {}
        for name in attributes:
            kind = AttributeKind.MULTI if name in multilabel else AttributeKind.SINGLE
            counts = value_counts(frame[name], kind)
            if kind is AttributeKind.SINGLE and len(counts) < 2:
                dropped[name] = f"only {len(counts)} class in the training split ({', '.join(counts) or 'none'})"
                continue
            if kind is AttributeKind.MULTI and not counts:
                dropped[name] = "no tags in the training split"
                continue
            classes = sorted(counts)
            attrs.append(Attribute(name, kind, classes, [int(counts[c]) for c in classes]))
        return cls(attrs), dropped

    def encode(self, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Targets per head (single: class index, MISSING or UNKNOWN; multi: 0/1 matrix) and unknown counts."""
        targets, unknown = {}, {}
        for a in self.attributes:
            index = {c: i for i, c in enumerate(a.classes)}
            index.update({c: index[OTHER] for c in a.merged})
            col = frame[a.name] if a.name in frame else pd.Series([None] * len(frame))
            if a.multi:
                codes = np.zeros((len(frame), len(a.classes)), dtype=np.float32)
                n_unknown = 0
                for r, v in enumerate(col):
                    for tag in split_tags(v):
                        if tag in index:
                            codes[r, index[tag]] = 1.0
                        else:
                            n_unknown += 1
                unknown[a.name] = n_unknown
            else:
                codes = np.array([MISSING if is_blank(v) else index.get(str(v).strip(), UNKNOWN) for v in col],
                                 dtype=np.int64)
                unknown[a.name] = int((codes == UNKNOWN).sum())
            targets[a.name] = codes
        return targets, unknown


@functools.lru_cache(maxsize=4096)  # asked for on every stored column name of every search hit
def column_suffix(attribute: str) -> str:
    """A lower-case, SQL-safe column suffix for any attribute name (`baseColour` -> `basecolour`)."""
    s = re.sub(r"[^0-9a-z]+", "_", attribute.lower()).strip("_") or "attr"
    return s if not s[0].isdigit() else f"a_{s}"


def check_distinct_columns(names: list[str], where: str) -> None:
    """Two attributes must not share a stored column (`shape` and `Shape`, `base colour` and `base_colour`)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(column_suffix(name), name)
        if other != name:
            raise MhtagError(f"{where}: attribute columns {other!r} and {name!r} differ only in case or punctuation "
                             "and would share one index column; rename one (or --ignore it)")
