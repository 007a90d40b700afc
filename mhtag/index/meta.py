"""`meta.json` beside the table: the model, backbone, embedding size and label schema the rows were made with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from mhtag.core.errors import MhtagError
from mhtag.core.storage import join, location, read_text, stamp, write_text
from mhtag.data.schema import column_suffix
from mhtag.index.columns import StoredAttribute, arrow_schema

INDEX_FORMAT = 1


@dataclass
class IndexMeta:
    model_id: str  # content hash of the checkpoint, or `backbone:<name>` without a model
    model_path: str | None
    backbone: str
    dim: int
    data_config: dict[str, Any]
    schema_version: str | None
    attributes: list[StoredAttribute]
    root: str | None = None
    fusion: dict[str, float] = field(default_factory=dict)  # attribute -> weight of the head vs neighbours
    fusion_k: int = 20  # the neighbour count the fusion weights were tuned with
    fusion_tau: dict[str, float] = field(default_factory=dict)  # attribute -> its vote's softmax temperature
    format: int = INDEX_FORMAT
    text_columns: list[str] = field(default_factory=list)  # free-text columns of the labels, as named there
    space: str | None = None  # the backbone's identity (weights, preprocessing, options): what the vectors mean
    label_changes: int = 0  # changes the label history holds (a missing history is then an error, not a reset)
    labels_applied: int = 0  # the id of the last change applied to the table (later ones are replayed)
    model_labels: int = 0  # the id of the last change the model's heads were trained with

    def table_schema(self) -> pa.Schema:
        return arrow_schema(self.dim, self.attributes, self.text_columns)

    def attribute(self, name: str) -> StoredAttribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)

    def find_attribute(self, name: str) -> StoredAttribute | None:
        """Case-insensitive lookup, also by column suffix (`--base-colour`, `--basecolour`, `--baseColour`)."""
        key = column_suffix(name.replace("-", "_"))
        for a in self.attributes:
            if a.name.lower() == name.lower() or a.column == key or a.column.replace("_", "") == key.replace("_", ""):
                return a
        return None

    def to_json(self) -> str:
        d = asdict(self)
        for a in d["attributes"]:
            a["kind"] = str(a["kind"])
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexMeta:
        d = dict(d)
        d["attributes"] = [StoredAttribute(**{k: v for k, v in a.items() if k != "column"}) for a in d["attributes"]]
        return cls(**d)


def meta_path(db: str | Path) -> str:
    return join(db, "meta.json")


def read_meta(db: str | Path) -> IndexMeta | None:
    """The index's meta, None where there is no index; a damaged or foreign one is a clear error."""
    p = meta_path(db)
    text = read_text(p)
    if text is None:
        return None
    try:
        d = json.loads(text)
        fmt = d.get("format") if isinstance(d, dict) else None
        if fmt != INDEX_FORMAT:
            raise MhtagError(f"index {db} has format {fmt!r}; this mhtag reads format {INDEX_FORMAT}. Rebuild it "
                             f"with `mhtag index DIR --db {db} --rebuild`")
        return IndexMeta.from_dict(d)
    except MhtagError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MhtagError(f"index meta {p} is damaged ({type(exc).__name__}: {str(exc)[:120]}); rebuild the index "
                         f"with `mhtag index DIR --db {db} --rebuild`") from exc


def require_meta(db: str | Path) -> IndexMeta:
    meta = read_meta(db)
    if meta is None:
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`")
    return meta


def current_meta(db: str | Path) -> IndexMeta:
    """`require_meta` for readers that only look (searches, the server): parsed once per version of the file.
    The object is shared between callers: never modify it."""
    version = stamp(meta_path(db))
    if version is None:
        return require_meta(db)  # the same clear error
    return _parsed_meta(str(location(db)), version)


@lru_cache(maxsize=16)
def _parsed_meta(db: str, version: tuple[int, int, int]) -> IndexMeta:
    return require_meta(db)


def write_meta(db: str | Path, meta: IndexMeta) -> None:
    write_text(meta_path(db), meta.to_json())
