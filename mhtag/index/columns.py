"""The index table's columns, defined once.

Row columns: `rid` (int64 key from the path), `id` (content sha1), `path`, `rel` (path under the indexed root),
`size`, `mtime_ns`, `width`, `height` (upright), `split`, `changed_ns` (when a person last changed a label; 0:
never), `vector`, and per attribute `pred_<a>` (label, or
`|tag|tag|` for tag groups), `conf_<a>`, `probs_<a>` (the head's full probabilities) and `label_<a>` (a known
label, kept apart from predictions), and `text_<t>` per free-text column of the labels (a product title). `<a>` and
`<t>` are column-safe names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa

from mhtag.data.schema import AttributeSpec, column_suffix

PROBS = "probs_"  # the widest columns: full head probabilities


@dataclass
class StoredAttribute(AttributeSpec):
    """An attribute as the index holds it: a head's predictions, known labels, or both."""

    has_head: bool = False
    has_labels: bool = False
    label_values: list[str] = field(default_factory=list)  # known labels seen in the CSV
    thresholds: list[float] = field(default_factory=list)  # a tag group's head: the cut per tag (tuned on val)
    zero_shot: bool = False  # answered from prompts through the model's text tower, not by a trained head
    templates: list[str] = field(default_factory=list)  # a zero-shot attribute's prompts
    temperature: float | None = None  # ... its softmax temperature, where labelled rows calibrated it

    @property
    def column(self) -> str:
        return column_suffix(self.name)

    @property
    def pred(self) -> str:
        return f"pred_{self.column}"

    @property
    def conf(self) -> str:
        return f"conf_{self.column}"

    @property
    def probs(self) -> str:
        return f"{PROBS}{self.column}"

    @property
    def label(self) -> str:
        return f"label_{self.column}"

    def columns(self) -> list[pa.Field]:
        fields = []
        if self.has_head:
            fields += [pa.field(self.pred, pa.string()), pa.field(self.conf, pa.float32()),
                       pa.field(self.probs, pa.list_(pa.float32()))]
        if self.has_labels:
            fields.append(pa.field(self.label, pa.string()))
        return fields


def base_fields(dim: int) -> list[pa.Field]:
    return [pa.field("rid", pa.int64()), pa.field("id", pa.string()), pa.field("path", pa.string()),
            pa.field("rel", pa.string()), pa.field("size", pa.int64()), pa.field("mtime_ns", pa.int64()),
            pa.field("width", pa.int32()), pa.field("height", pa.int32()), pa.field("split", pa.string()),
            pa.field("changed_ns", pa.int64()), pa.field("vector", pa.list_(pa.float32(), dim))]


def text_column(name: str) -> str:
    """The column of a free-text CSV column (a product title): kept and exported, never a head."""
    return f"text_{column_suffix(name)}"


def arrow_schema(dim: int, attributes: list[StoredAttribute], texts: list[str] = ()) -> pa.Schema:
    return pa.schema(base_fields(dim) + [f for a in attributes for f in a.columns()] +
                     [pa.field(text_column(t), pa.string()) for t in texts])


def rid_for(rel_path: str) -> int:
    """Stable signed 64-bit row key from the path: sharded writers need no shared counter."""
    return int.from_bytes(hashlib.sha1(rel_path.encode()).digest()[:8], "big", signed=True)
