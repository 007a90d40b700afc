"""Synthetic indexes for benchmarks and tests: clustered unit vectors and label columns, any size, no images.

Row i carries value `values[i % len(values)]` of every attribute, so a filter's exact membership is known, or,
with `random_labels`, a value drawn at random (independent attributes, as in a real catalogue)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from mhtag.data.schema import AttributeKind
from mhtag.index.columns import StoredAttribute, arrow_schema
from mhtag.index.meta import IndexMeta, write_meta
from mhtag.index.store import open_table, sync_vectors


def synthetic_vectors(n: int, dim: int, seed: int = 0, centres: int = 2000, spread: float = 0.35,
                      chunk: int = 100_000) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, unit vectors) chunks: points scattered around `centres` random directions."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = c[rng.integers(0, centres, m)] + spread * rng.normal(size=(m, dim)).astype(np.float32)
        yield start, x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic_index(db: str | Path, rows: int, dim: int, attributes: dict[str, list[str]], seed: int = 0,
                          model_id: str = "synthetic", backbone: str = "synthetic",
                          data_config: dict | None = None, random_labels: bool = False) -> IndexMeta:
    """A table of `rows` synthetic rows with known labels for `attributes` ({name: values}) at `db`."""
    attrs = [StoredAttribute(name, AttributeKind.SINGLE, has_labels=True, label_values=sorted(values))
             for name, values in attributes.items()]
    meta = IndexMeta(model_id, None, backbone, dim, data_config or {}, None, attrs, str(db))
    write_meta(db, meta)
    table = open_table(db, meta, create=True)
    schema = arrow_schema(dim, attrs)
    rng = np.random.default_rng(seed + 1)
    for start, x in synthetic_vectors(rows, dim, seed):
        ids = np.arange(start, start + len(x))
        cols = {"rid": pa.array(ids, pa.int64()), "id": [f"{i:040x}" for i in ids],
                "path": [f"/synthetic/{i}.jpg" for i in ids], "rel": [f"{i}.jpg" for i in ids],
                "size": np.zeros(len(x), np.int64), "mtime_ns": np.zeros(len(x), np.int64),
                "width": np.full(len(x), 60, np.int32), "height": np.full(len(x), 80, np.int32),
                "split": ["train"] * len(x), "changed_ns": np.zeros(len(x), np.int64),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)}
        for a, values in zip(attrs, attributes.values(), strict=True):
            cols[a.label] = rng.choice(values, len(ids)).tolist() if random_labels \
                else [values[i % len(values)] for i in ids]
        table.add(pa.Table.from_pydict(cols, schema=schema))
    sync_vectors(db)
    return meta
