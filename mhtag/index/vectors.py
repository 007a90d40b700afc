"""Vector math through FAISS: exact or IVF inner-product search over any subset of rows; a torch matmul on GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mhtag.core.io import atomic_path

EXACT_MAX_ROWS = 200_000  # tables larger than this also get an IVF index (see benchmarks/search_filtered.py)
EXACT_MAX_MATCHES = 20_000  # with an IVF index, filters passing more rows than this search approximately
BLAS_MIN_QUERIES = 16  # from this many queries a batch goes through BLAS (see setup_faiss)
DENSE_MIN_SHARE = 0.25  # fewer queries over more than this share of the rows: a BLAS pass over all rows


def _mask_of(positions: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[positions] = True
    return mask


def setup_faiss(threads: int | None = None) -> None:
    """Explicit process setup for FAISS. faiss 1.15 raised the size at which a batch of queries goes through
    BLAS to 128000 (8-10x slower batches here); 16 restores the fast path."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES
    if threads:
        faiss.omp_set_num_threads(threads)


class VectorIndex:
    """Inner-product search over (L2-normalised) vectors, restricted to any subset of rows.

    Exact (flat) search serves small tables and selective filters; large tables get an IVF index whose
    probe count grows as the filter narrows, so a filtered query still finds `k` rows when `k` match.
    With `torch_device` (a GPU), exact search runs as one matmul + top-k there instead.
    """

    def __init__(self, vectors: np.ndarray, rids: np.ndarray, exact_max_rows: int = EXACT_MAX_ROWS,
                 exact_max_matches: int = EXACT_MAX_MATCHES, torch_device: str | None = None):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.rids = np.asarray(rids, dtype=np.int64)
        self.dim = vectors.shape[1]
        self.flat = faiss.IndexFlatIP(self.dim)
        self.flat.add(vectors)
        # a view of FAISS's own copy: the vectors are held once, not twice
        self.vectors = faiss.rev_swig_ptr(self.flat.get_xb(), vectors.size).reshape(vectors.shape)
        self.ivf = None
        self.exact_max_rows = exact_max_rows
        self.exact_max_matches = exact_max_matches
        self.on_torch = None
        if torch_device is not None:
            import torch

            self.on_torch = torch.from_numpy(self.vectors).to(torch_device)

    @property
    def wants_ivf(self) -> bool:
        return len(self.vectors) > self.exact_max_rows

    def build_ivf(self, nlist: int | None = None, seed: int = 0) -> VectorIndex:
        import faiss

        n = len(self.vectors)
        nlist = nlist or int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(self.dim)
        self.ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        self.ivf.train(self.vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)])
        self.ivf.add(self.vectors)
        return self

    def save_ivf(self, path: Path) -> None:
        import faiss

        with atomic_path(path) as tmp:
            faiss.write_index(self.ivf, str(tmp))

    def load_ivf(self, path: Path) -> VectorIndex:
        import faiss

        self.ivf = faiss.read_index(str(path))
        return self

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None,
               base_nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, positions) per query among `rows` (a boolean mask or positions; None = all).

        Exact unless there is an IVF index and more than `exact_max_matches` rows pass the filter; then the
        IVF probes `base_nprobe / selectivity` lists, so sparser filters look further.
        """
        import faiss

        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self.vectors)
        mask = positions = None
        if rows is not None and rows.dtype == bool:
            mask, positions = rows, np.flatnonzero(rows)
        elif rows is not None:
            positions = rows if _strictly_increasing(rows) else np.unique(rows)
        m = n if positions is None else len(positions)
        k_eff = min(k, m)
        if k_eff <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if m == n:
            mask = positions = None
        use_ivf = self.ivf is not None and m > self.exact_max_matches
        if self.on_torch is not None and not use_ivf:
            return self._torch_search(q, k_eff, positions)
        if not use_ivf and len(q) < BLAS_MIN_QUERIES:
            if m > n * DENSE_MIN_SHARE:
                return self._dense_search(q, k_eff, mask if mask is not None or positions is None
                                          else _mask_of(positions, n))
            return self._subset_search(q, k_eff, positions)
        if positions is not None and mask is None:
            mask = _mask_of(positions, n)
        params = faiss.SearchParametersIVF(nprobe=int(min(self.ivf.nlist, np.ceil(base_nprobe * n / m)))) \
            if use_ivf else None
        packed = selector = None
        if mask is not None:  # both must outlive the search: faiss holds raw pointers
            packed = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(packed))
            params = params or faiss.SearchParameters()
            params.sel = selector
        scores, pos = (self.ivf if use_ivf else self.flat).search(q, k_eff, params=params)
        del packed, selector
        return scores, pos

    def _dense_search(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of a few queries over most rows: one BLAS product over every row, on all cores (FAISS
        scans for a single query on one thread: 2.3x slower over 100k x 1280 here), then a partial sort."""
        scores = q @ self.vectors.T
        if mask is not None:
            scores[:, ~mask] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-best, axis=1, kind="stable")
        return np.take_along_axis(best, order, axis=1), np.take_along_axis(top, order, axis=1)

    def _subset_search(self, q: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the listed rows only: no pass over the rows the filter dropped."""
        import faiss

        positions = positions.astype(np.int64)
        scores = np.empty((len(q), k), dtype=np.float32)
        pos = np.empty((len(q), k), dtype=np.int64)
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), faiss.swig_ptr(self.vectors), faiss.swig_ptr(positions),
                                        self.dim, len(q), len(self.vectors), len(positions), k,
                                        faiss.swig_ptr(scores), faiss.swig_ptr(pos), 0)  # 0: one list, all queries
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


def _strictly_increasing(positions: np.ndarray) -> bool:
    """Already sorted and unique (as `np.flatnonzero` gives them): no need for `np.unique`'s hash pass."""
    return len(positions) < 2 or bool((positions[1:] > positions[:-1]).all())
