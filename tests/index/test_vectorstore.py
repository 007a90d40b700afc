"""The persisted vector store: a version's layout maps rows to slots; label-only versions read no vector, new and
changed images get new slots (a stale vector is never returned), writers fold tails into generations (with an IVF
index past the exact threshold), and a restart reads it all back without touching the table."""

import hashlib

import numpy as np
import pytest

import mhtag.index.vectorstore as vs
from mhtag.index.vectorstore import VectorStore, row_keys


def _unit(n, d, seed, centres=40):
    """Clustered unit vectors, as embeddings are (an IVF index is for those)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(centres, d))[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Table:
    """A stand-in for the LanceDB table: rows (rid, content id, vector) in scan order; counts the vectors read."""

    def __init__(self, rids, vectors, contents=None):
        self.rids = np.asarray(rids, dtype=np.int64)
        self.vectors = vectors
        self.contents = contents if contents is not None else [f"c{r}" for r in self.rids]
        self.read = 0

    @property
    def ids(self):
        return [hashlib.sha1(c.encode()).hexdigest() for c in self.contents]

    @property
    def keys(self):
        import pyarrow as pa

        return row_keys(self.rids, pa.array(self.ids))

    def take(self, positions):
        self.read += len(positions)
        return self.vectors[positions]

    def blocks(self):
        self.read += len(self.vectors)
        yield from (self.vectors[i:i + 100] for i in range(0, len(self.vectors), 100))

    def view(self, store, version):
        return store.view(version, self.rids, self.keys, self)


def test_row_keys_change_with_the_content_and_the_row():
    import pyarrow as pa

    keys = row_keys(np.array([1, 1, 2]), pa.array(["ab" * 20, "cd" * 20, "ab" * 20]))
    assert len(set(keys.tolist())) == 3 and keys.dtype == np.uint64


def test_a_label_only_version_reads_no_vector_and_a_restart_reads_none(tmp_path):
    x = _unit(300, 8, 0)
    table = Table(np.arange(300) * 3, x)
    store = VectorStore(tmp_path / "engine", 8)
    store.sync(1, table.keys, table)
    assert table.read == 300  # the first generation, from the table once
    reordered = Table(table.rids[::-1], x[::-1])  # a label edit: same rows, rewritten, another scan order
    first = reordered.view(store, 2)
    assert reordered.read == 0
    _, pos = first.search(x[7], 3)
    assert reordered.rids[pos[0][0]] == table.rids[7]
    again = Table(table.rids[::-1], x[::-1])
    restarted = again.view(VectorStore(tmp_path / "engine", 8), 2)  # a new process: the layout is on disk
    assert again.read == 0 and np.array_equal(restarted.at([5]), first.at([5]))


def test_appends_are_searched_at_once_and_changed_images_never_return_their_old_vector(tmp_path):
    x = _unit(400, 8, 1)
    store = VectorStore(tmp_path / "engine", 8)
    table = Table(np.arange(300), x[:300])
    store.sync(1, table.keys, table)
    grown = Table(np.arange(310), x[:310])  # ten new images
    index = grown.view(store, 2)
    assert grown.read == 10 and store.state().tails  # read the new rows only, kept in a tail
    _, pos = index.search(x[305], 1)
    assert pos[0][0] == 305
    contents = [f"c{r}" for r in range(310)]
    contents[4] = "c4, edited"  # row 4's image changed: a new vector under the same row id
    vectors = x[:310].copy()
    vectors[4] = x[399]
    changed = Table(np.arange(310), vectors, contents)
    index = changed.view(store, 3)
    assert changed.read == 1
    _, pos = index.search(x[4], 310)
    scores, _ = index.search(x[399], 1)
    assert pos[0][0] != 4 and index.row_of_slot[4] == -1 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(index.at([4])[0], x[399])


def test_writers_fold_tails_into_a_generation_with_an_ivf_index_past_the_exact_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(vs, "EXACT_MAX_ROWS", 1000)
    x = _unit(3000, 16, 2)
    store = VectorStore(tmp_path / "engine", 16)
    small = Table(np.arange(900), x[:900])
    store.sync(1, small.keys, small)
    assert store.state().generation == 1 and not store.state().ivf and store.state().dtype == "float32"
    big = Table(np.arange(3000), x)
    state = store.sync(2, big.keys, big)  # 2,100 more: past the tail share and the exact threshold
    assert state.generation == 2 and state.ivf and state.dtype == "float16" and not state.tails
    assert not (tmp_path / "engine" / "gen-1").exists()
    index = big.view(store, 2)
    index.exact_max_matches = 100
    rows = np.arange(0, 3000, 2)
    hits = [index.search(x[i], 10, rows=rows)[1][0] for i in range(0, 400, 40)]
    exact = [rows[np.argsort(-(x[rows] @ x[i]))[:10]] for i in range(0, 400, 40)]
    recall = np.mean([len(set(h) & set(e)) / 10 for h, e in zip(hits, exact, strict=True)])
    assert recall >= 0.95


def test_a_store_of_another_embedding_size_starts_over(tmp_path):
    store = VectorStore(tmp_path / "engine", 8)
    table = Table(np.arange(50), _unit(50, 8, 3))
    store.sync(1, table.keys, table)
    other = Table(np.arange(50), _unit(50, 4, 3))
    index = other.view(VectorStore(tmp_path / "engine", 4), 2)  # the index was rebuilt with another backbone
    assert index.dim == 4 and other.read == 50
