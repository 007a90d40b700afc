import tempfile
from pathlib import Path

import numpy as np
import pytest

from mhtag.data.schema import column_suffix, decode_tags, encode_tags
from mhtag.index.columns import rid_for
from mhtag.index.vectors import VectorIndex


def _clustered(n, d, seed=0, centres=50):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact(x, q, k, positions=None):
    pos = np.arange(len(x)) if positions is None else np.asarray(positions)
    s = x[pos] @ q
    return pos[np.argsort(-s)[:k]]


def test_flat_search_matches_brute_force_with_and_without_a_filter():
    x = _clustered(3000, 32)
    vi = VectorIndex.of(x, np.arange(3000) * 7)
    q = x[5] + 0.01
    scores, pos = vi.search(q, 10)
    assert list(pos[0]) == list(_exact(x, q, 10))
    subset = np.arange(0, 3000, 37)
    scores, pos = vi.search(q, 10, rows=subset)
    assert set(pos[0]) <= set(subset) and list(pos[0]) == list(_exact(x, q, 10, subset))
    _, pos = vi.search(q, 10, rows=np.array([3, 4]))  # fewer matches than k: all of them, no padding
    assert sorted(pos[0]) == [3, 4]


@pytest.mark.parametrize("share", [1.0, 0.6, 0.3, 0.05])
def test_every_exact_path_gives_the_same_rows_in_the_same_order(share):
    """A few queries over most rows (one BLAS pass), over few rows (gathered), and a batch."""
    x = _clustered(4000, 32, seed=5)
    vi = VectorIndex.of(x)
    mask = np.random.default_rng(6).random(4000) < share
    queries = x[:20] + 0.01
    batch_scores, batch_pos = vi.search(queries, 10, rows=mask)
    for i in (0, 7):
        for rows in (mask, np.flatnonzero(mask)):
            scores, pos = vi.search(queries[i], 10, rows=rows)
            assert list(pos[0]) == list(_exact(x, queries[i], 10, np.flatnonzero(mask))) == list(batch_pos[i])
            assert np.allclose(scores[0], batch_scores[i], atol=1e-5)


def test_ivf_path_keeps_recall_and_returns_k_at_any_selectivity():
    from mhtag.index.vectors import Slots
    from mhtag.index.vectorstore import _write_ivf

    n = 20000
    x = _clustered(n, 32, seed=1)
    base = x.astype(np.float16)  # as a large table stores them: re-ranked on float16
    path = Path(tempfile.mkdtemp()) / "ivf.faiss"
    _write_ivf(base, path)
    import faiss

    vi = VectorIndex(Slots(base, np.zeros((0, 32), np.float32), faiss.read_index(str(path))), np.arange(n),
                     exact_max_matches=1000)
    rng = np.random.default_rng(2)
    for frac in (1.0, 0.5, 0.2, 0.01):
        subset = np.sort(rng.choice(n, int(n * frac), replace=False))
        recalls = []
        for qi in rng.choice(n, 20, replace=False):
            _, pos = vi.search(x[qi], 10, rows=subset)
            assert len(pos[0]) == 10 and (pos[0] >= 0).all() and set(pos[0]) <= set(subset)
            recalls.append(len(set(pos[0]) & set(_exact(x, x[qi], 10, subset))) / 10)
        assert np.mean(recalls) >= 0.95, (frac, np.mean(recalls))


def test_row_keys_tags_and_column_names():
    assert rid_for("a/b.jpg") == rid_for("a/b.jpg") != rid_for("a/c.jpg")
    assert decode_tags(encode_tags(["x", "y z"])) == ["x", "y z"] and encode_tags([]) == ""
    assert column_suffix("baseColour") == "basecolour" and column_suffix("2 view's") == "a_2_view_s"


@pytest.mark.parametrize("k", [0, 1])
def test_empty_or_tiny_requests(k):
    vi = VectorIndex.of(_clustered(5, 4))
    _, pos = vi.search(np.ones(4, np.float32), k, rows=np.array([], dtype=np.int64))
    assert pos.shape[1] == 0
