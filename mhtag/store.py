"""The image store: one LanceDB table (source of truth) plus a FAISS index derived from its vectors.

Row columns: `rid` (int64 key from the path), `id` (content sha1), `path`, `rel` (path under the indexed
root), `size`, `mtime_ns`, `width`, `height`, `split`, `vector`, and per attribute `pred_<a>` (label, or
`|tag|tag|` for tag groups), `conf_<a>`, `probs_<a>` (the head's full probabilities) and `label_<a>`
(a known label, kept apart from predictions). `meta.json` beside the table records the model, backbone,
embedding size and label schema the rows were made with.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mhtag.errors import MhtagError

TABLE = "images"
DEFAULT_DB = Path("indexes/default")
EXACT_MAX_ROWS = 200_000  # tables larger than this also get an IVF index (see benchmarks/search_filtered.py)
EXACT_MAX_MATCHES = 20_000  # with an IVF index, filters passing more rows than this search approximately


def column_suffix(attribute: str) -> str:
    """A lower-case, SQL-safe column suffix for any attribute name (`baseColour` -> `basecolour`)."""
    s = re.sub(r"[^0-9a-z]+", "_", attribute.lower()).strip("_") or "attr"
    return s if not s[0].isdigit() else f"a_{s}"


def rid_for(rel_path: str) -> int:
    """Stable signed 64-bit row key from the path: sharded writers need no shared counter."""
    return int.from_bytes(hashlib.sha1(rel_path.encode()).digest()[:8], "big", signed=True)


def encode_tags(tags: list[str]) -> str:
    """Tag groups are stored as `|a|b|` so a filter for one tag is a plain substring match on `|a|`."""
    return "|" + "|".join(tags) + "|" if tags else ""


def decode_tags(value: str | None) -> list[str]:
    return [t for t in (value or "").split("|") if t]


@dataclass
class StoredAttribute:
    name: str
    kind: str  # single | multi
    column: str  # suffix of pred_/conf_/probs_/label_ columns
    classes: list[str] = field(default_factory=list)  # the head's vocabulary (empty when there is no head)
    has_head: bool = False
    has_labels: bool = False
    label_values: list[str] = field(default_factory=list)  # known labels seen in the CSV


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
    fusion_k: int = 20
    format: int = 1

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
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexMeta:
        d = dict(d)
        d["attributes"] = [StoredAttribute(**a) for a in d["attributes"]]
        return cls(**d)


def meta_path(db: Path) -> Path:
    return Path(db) / "meta.json"


def read_meta(db: str | Path) -> IndexMeta | None:
    p = meta_path(Path(db))
    if not p.is_file():
        return None
    return IndexMeta.from_dict(json.loads(p.read_text()))


def require_meta(db: str | Path) -> IndexMeta:
    meta = read_meta(db)
    if meta is None:
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`")
    return meta


def write_meta(db: str | Path, meta: IndexMeta) -> None:
    p = meta_path(Path(db))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".meta.{os.getpid()}.tmp")
    tmp.write_text(meta.to_json())
    os.replace(tmp, p)


@contextmanager
def writer_lock(db: str | Path) -> Iterator[None]:
    """One writer per database: a second `index` run fails at once with a clear message."""
    Path(db).mkdir(parents=True, exist_ok=True)
    with open(Path(db) / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise MhtagError(f"another `mhtag index` (pid {holder}) is writing to {db}; "
                             "wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def arrow_schema(meta: IndexMeta) -> pa.Schema:
    fields = [pa.field("rid", pa.int64()), pa.field("id", pa.string()), pa.field("path", pa.string()),
              pa.field("rel", pa.string()), pa.field("size", pa.int64()), pa.field("mtime_ns", pa.int64()),
              pa.field("width", pa.int32()), pa.field("height", pa.int32()), pa.field("split", pa.string()),
              pa.field("vector", pa.list_(pa.float32(), meta.dim))]
    for a in meta.attributes:
        if a.has_head:
            fields += [pa.field(f"pred_{a.column}", pa.string()), pa.field(f"conf_{a.column}", pa.float32()),
                       pa.field(f"probs_{a.column}", pa.list_(pa.float32()))]
        if a.has_labels:
            fields.append(pa.field(f"label_{a.column}", pa.string()))
    return pa.schema(fields)


def connect(db: str | Path):
    import lancedb

    return lancedb.connect(str(db))


def _has_table(conn) -> bool:
    return TABLE in conn.list_tables().tables


def open_table(db: str | Path, meta: IndexMeta | None = None, create: bool = False):
    conn = connect(db)
    if _has_table(conn):
        return conn.open_table(TABLE)
    if not create:
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`")
    return conn.create_table(TABLE, schema=arrow_schema(meta))


def drop_table(db: str | Path) -> None:
    conn = connect(db)
    if _has_table(conn):
        conn.drop_table(TABLE)


def read_columns(table, columns: list[str], where=None) -> pa.Table:
    q = table.search().select(columns).limit(None)
    if where is not None:
        q = q.where(where, prefilter=True)
    return q.to_arrow()


def vectors_of(arrow: pa.Table, dim: int) -> np.ndarray:
    col = arrow.column("vector").combine_chunks()
    return np.ascontiguousarray(col.values.to_numpy(zero_copy_only=False).reshape(-1, dim), dtype=np.float32)


class VectorIndex:
    """Inner-product search over the table's (L2-normalised) vectors, restricted to any subset of rows.

    Exact (flat) search serves small tables and selective filters; large tables get an IVF index whose
    probe count grows as the filter narrows, so a filtered query still finds `k` rows when `k` match.
    On a GPU the flat search runs as a torch matmul instead.
    """

    def __init__(self, vectors: np.ndarray, rids: np.ndarray, exact_max_rows: int = EXACT_MAX_ROWS,
                 nlist: int | None = None, seed: int = 0, ivf_file: Path | None = None,
                 exact_max_matches: int = EXACT_MAX_MATCHES, torch_device: str | None = None):
        import faiss

        faiss.cvar.distance_compute_blas_threshold = 16  # faiss 1.15 raised it to 128000: 8-10x slower batches
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.rids = np.asarray(rids, dtype=np.int64)
        self.dim = self.vectors.shape[1]
        self.flat = faiss.IndexFlatIP(self.dim)
        self.flat.add(self.vectors)
        self.ivf = None
        self.exact_max_matches = exact_max_matches
        if torch_device is None:
            import torch

            torch_device = "cuda" if torch.cuda.is_available() else None
        self.on_torch = None  # exact search as one matmul + top-k on the GPU, when there is one
        if torch_device is not None:
            import torch

            self.on_torch = torch.from_numpy(self.vectors).to(torch_device)
        n = len(self.vectors)
        if n > exact_max_rows and ivf_file is not None and ivf_file.is_file():
            self.ivf = faiss.read_index(str(ivf_file))
        elif n > exact_max_rows:
            nlist = nlist or int(4 * np.sqrt(n))
            quantizer = faiss.IndexFlatIP(self.dim)
            self.ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = self.vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)]
            self.ivf.train(sample)
            self.ivf.add(self.vectors)
            if ivf_file is not None:
                tmp = ivf_file.with_name(f".{ivf_file.name}.{os.getpid()}.tmp")
                faiss.write_index(self.ivf, str(tmp))
                os.replace(tmp, ivf_file)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None,
               base_nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, positions) per query among `rows` (a boolean mask or positions; None = all).

        Exact unless the table has an IVF index and more than `exact_max_matches` rows pass the filter; then
        the IVF probes `base_nprobe / selectivity` lists, so sparser filters look further.
        """
        import faiss

        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self.vectors)
        mask = None
        if rows is not None:
            mask = rows if rows.dtype == bool else np.bincount(rows, minlength=n).astype(bool)
        m = n if mask is None else int(mask.sum())
        k_eff = min(k, m)
        if k_eff == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        selector, packed = None, None
        if mask is not None and m < n:
            packed = np.packbits(mask, bitorder="little")  # must outlive the search: faiss keeps a pointer
            selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(packed))
        if self.ivf is not None and m > self.exact_max_matches:
            nprobe = int(min(self.ivf.nlist, np.ceil(base_nprobe * n / m)))
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if selector is not None:
                params.sel = selector
            scores, pos = self.ivf.search(q, k_eff, params=params)
        elif self.on_torch is not None:
            scores, pos = self._torch_search(q, k_eff, np.flatnonzero(mask) if selector is not None else None)
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores, pos = self.flat.search(q, k_eff, params=params)
        del packed
        return scores, pos

    def _torch_search(self, q: np.ndarray, k: int, positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        qt = torch.from_numpy(q).to(self.on_torch.device)
        if positions is None:
            s, i = (qt @ self.on_torch.T).topk(k, dim=1)
            return s.cpu().numpy(), i.cpu().numpy()
        idx = torch.from_numpy(np.asarray(positions, dtype=np.int64)).to(self.on_torch.device)
        s, i = (qt @ self.on_torch[idx].T).topk(k, dim=1)
        return s.cpu().numpy(), idx[i].cpu().numpy()


@dataclass
class Snapshot:
    """One version of the table in memory, for searching: every column but the vectors and probabilities,
    and the vector index over the same rows in the same order. String columns are dictionary-encoded on
    first use, so a filter over a million rows is a table lookup on integer codes."""

    version: int
    rows: pa.Table
    vectors: VectorIndex
    _codes: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)

    def codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        """(code per row, distinct values) of a string column."""
        if column not in self._codes:
            enc = pc.dictionary_encode(self.rows.column(column)).combine_chunks()
            self._codes[column] = (enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist())
        return self._codes[column]

    def values_in(self, column: str, accept) -> np.ndarray:
        """Boolean mask of the rows whose value satisfies `accept(value)`, evaluated once per distinct value."""
        codes, vocab = self.codes(column)
        table = np.fromiter((accept(v) for v in vocab), dtype=bool, count=len(vocab))
        return table[codes] if len(vocab) else np.zeros(len(codes), dtype=bool)


@lru_cache(maxsize=2)
def _snapshot(db: str, key: tuple[int, int], dim: int) -> Snapshot:
    table = open_table(db)
    version = table.version
    names = [n for n in table.schema.names if not n.startswith("probs_")]
    arrow = read_columns(table, names)
    for stale in glob.glob(os.path.join(db, "ivf-*.faiss")):
        if stale != os.path.join(db, f"ivf-{version}.faiss"):
            os.unlink(stale)
    index = VectorIndex(vectors_of(arrow, dim), arrow.column("rid").to_numpy(),
                        ivf_file=Path(db) / f"ivf-{version}.faiss")
    rows = arrow.drop_columns(["vector"]).combine_chunks()  # one chunk per column: cheap takes
    return Snapshot(version, rows, index)


def _version_key(db: str | Path) -> tuple[int, int]:
    """Changes whenever a commit adds a manifest: a stat and a listing, far cheaper than opening the table."""
    versions = Path(db) / f"{TABLE}.lance" / "_versions"
    if not versions.is_dir():
        raise MhtagError(f"no index at {db}; build one with `mhtag index DIR --db {db}`")
    return versions.stat().st_mtime_ns, len(os.listdir(versions))


def snapshot(db: str | Path) -> Snapshot:
    """The table as it is now; reloaded only when a write has made a new table version."""
    meta = require_meta(db)
    return _snapshot(str(db), _version_key(db), meta.dim)
