"""Vector math: exact or IVF inner-product search over any subset of rows (FAISS and BLAS).

A `VectorIndex` searches *rows* (positions in a table snapshot) whose vectors live in *slots*: a base array
(float32, or float16 for large tables; in RAM or memory-mapped from the persisted store) with an optional IVF index
over it, and a float32 tail of slots appended since. A row maps to its slot; slots no row maps to (an image that
changed or left) are never returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EXACT_MAX_ROWS = 200_000  # tables larger than this get an IVF index (see benchmarks/search_engines.py)
EXACT_MAX_MATCHES = 20_000  # with an IVF index, filters passing more rows than this search approximately
DENSE_MIN_SHARE = 0.25  # a selection over more than this share of a float32 base: one BLAS pass over all of it
SCORE_BLOCK = 1 << 25  # query x row scores computed at once (128 MB of float32), a bound on memory
GATHER_BLOCK = 1 << 16  # rows of a float16 base converted at once


BLAS_MIN_QUERIES = 16  # from this many queries a batch goes through BLAS in FAISS (an IVF's coarse quantizer)


def setup_faiss(threads: int | None = None) -> None:
    """Explicit process setup for FAISS. faiss 1.15 raised the size at which a batch of queries goes through
    BLAS to 128000 (8-10x slower batches here); 16 restores the fast path."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES
    if threads:
        faiss.omp_set_num_threads(threads)


def refine_factor(ivf) -> int:
    """Candidates per wanted hit that an IVF's coarse scores must yield before the exact re-ranking: its codes
    approximate (8-bit scalar codes closely, product codes loosely)."""
    return 100 if "PQ" in type(ivf).__name__ else 4  # PQ: at 10M rows 20 gave recall@10 .81, 50 .95, 100 1.0


@dataclass
class Slots:
    """Vectors by slot: `base` (float32 or float16; an array or a memory map) then `tail` (float32), and an
    optional IVF index over the base slots (ids = slot numbers)."""

    base: np.ndarray
    tail: np.ndarray
    ivf: object | None = None

    def __len__(self) -> int:
        return len(self.base) + len(self.tail)

    @property
    def dim(self) -> int:
        return self.base.shape[1]

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """float32 vectors of `slots`, in their order."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), self.dim), dtype=np.float32)
        in_base = slots < len(self.base)
        if in_base.any():
            out[in_base] = self.base[slots[in_base]]
        if not in_base.all():
            out[~in_base] = self.tail[slots[~in_base] - len(self.base)]
        return out


@dataclass
class VectorIndex:
    """Inner-product search over (L2-normalised) row vectors, restricted to any subset of rows.

    Exact search serves small tables and selective filters (one BLAS product); a table with an IVF index answers
    wider filters from it, probing `base_nprobe / selectivity` lists so that sparser filters look further, then
    re-ranks the candidates on their stored vectors.
    """

    slots: Slots
    rids: np.ndarray  # row -> its key
    slot_of_row: np.ndarray | None = None  # row -> slot (None: row i is slot i)
    exact_max_matches: int = EXACT_MAX_MATCHES
    _row_of_slot: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, vectors: np.ndarray, rids: np.ndarray | None = None) -> VectorIndex:
        """An index of vectors in RAM, row i in slot i."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rids = np.arange(len(vectors)) if rids is None else rids
        return cls(Slots(vectors, np.zeros((0, vectors.shape[1]), np.float32)), np.asarray(rids, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rids)

    @property
    def dim(self) -> int:
        return self.slots.dim

    @property
    def row_of_slot(self) -> np.ndarray:
        """slot -> row (-1: no row)."""
        if self._row_of_slot is None:
            if self.slot_of_row is None:
                self._row_of_slot = np.arange(len(self.slots))
            else:
                self._row_of_slot = np.full(len(self.slots), -1, dtype=np.int64)
                self._row_of_slot[self.slot_of_row] = np.arange(len(self.slot_of_row))
        return self._row_of_slot

    def _slots_of(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.slot_of_row is None else self.slot_of_row[positions]

    def at(self, positions) -> np.ndarray:
        """float32 vectors of the rows at `positions`."""
        return self.slots.gather(self._slots_of(np.atleast_1d(np.asarray(positions, dtype=np.int64))))

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None,
               base_nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, positions) per query among `rows` (a boolean mask or positions; None = all rows);
        -1 pads a position where fewer than `k` rows are searched."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        mask = positions = None
        if rows is not None and rows.dtype == bool:
            mask, m = rows, int(np.count_nonzero(rows))  # a wide filter stays a mask: no list of millions of rows
        elif rows is not None:
            positions = _sorted_unique(np.asarray(rows, np.int64))
            m = len(positions)
        else:
            m = len(self.rids)
        if m == len(self.rids):
            mask = positions = None
        k_eff = min(k, m)
        if k_eff <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.slots.ivf is not None and m > self.exact_max_matches:
            scores, found = self._approximate(q, k_eff, self._slot_mask(mask, positions), m, base_nprobe)
        else:
            if mask is not None:
                positions = np.flatnonzero(mask)
            everything = positions is None and len(self.rids) == len(self.slots)  # every slot holds a row
            slots = None if everything else self._slots_of(np.arange(len(self.rids)) if positions is None
                                                           else positions)
            scores, found = self._exact(q, k_eff, slots)
        return scores, np.where(found >= 0, self.row_of_slot[np.maximum(found, 0)], -1)

    def _slot_mask(self, mask: np.ndarray | None, positions: np.ndarray | None) -> np.ndarray | None:
        """The selected rows as a mask over the slots (None: every slot)."""
        if mask is None and positions is None:
            if len(self.rids) == len(self.slots):
                return None
            positions = np.arange(len(self.rids))
        if self.slot_of_row is None and mask is not None:
            return np.concatenate([mask, np.zeros(len(self.slots) - len(mask), bool)]) \
                if len(mask) < len(self.slots) else mask
        chosen = np.zeros(len(self.slots), dtype=bool)
        chosen[self._slots_of(np.flatnonzero(mask) if positions is None else positions)] = True
        return chosen

    # ------------------------------------------------------------ exact

    def _exact(self, q: np.ndarray, k: int, slots: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among `slots` (None: every slot): a BLAS pass over a float32 base when the selection is
        most of it (no copy), else over the selection's gathered vectors."""
        base = self.slots.base
        n_base = len(base)
        dense = base.dtype == np.float32 and (slots is None or len(slots) > DENSE_MIN_SHARE * n_base)
        if not dense:
            chosen = np.arange(len(self.slots)) if slots is None else slots
            if base.dtype == np.float32 and len(q) < BLAS_MIN_QUERIES:  # no copy: FAISS reads the rows in place
                in_base = chosen < n_base
                scores, found = _by_index(q, base, chosen[in_base], k)
                if not in_base.all():
                    tail = chosen[~in_base]
                    t_scores, t_idx = _top_k(q, self.slots.gather(tail), k)
                    scores, found = _merge(scores, found, t_scores, np.where(t_idx >= 0, tail[np.maximum(t_idx, 0)],
                                                                              -1), k)
                return scores, found
            scores, idx = _top_k(q, self.slots.gather(chosen), k)
            return scores, np.where(idx >= 0, chosen[np.maximum(idx, 0)], -1)
        mask = None
        if slots is not None:
            mask = np.zeros(len(self.slots), dtype=bool)
            mask[slots] = True
        scores, found = _top_k(q, base, k, None if mask is None else mask[:n_base])
        if len(self.slots.tail):
            tail_mask = None if mask is None else mask[n_base:]
            t_scores, t_found = _top_k(q, self.slots.tail, k, tail_mask)
            scores, found = _merge(scores, found, t_scores, np.where(t_found >= 0, t_found + n_base, -1), k)
        return scores, found

    # ------------------------------------------------------------ approximate

    def _approximate(self, q: np.ndarray, k: int, chosen: np.ndarray | None, m: int,
                     base_nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The IVF over the base slots (restricted to the `chosen` slots), re-ranked exactly; the tail exactly."""
        import faiss

        ivf = self.slots.ivf
        n_base = len(self.slots.base)
        params = faiss.SearchParametersIVF(nprobe=int(min(ivf.nlist, np.ceil(base_nprobe * len(self.rids) / m))))
        packed = selector = None
        if chosen is not None:  # both must outlive the search: faiss holds raw pointers
            packed = np.packbits(chosen[:n_base], bitorder="little")
            selector = faiss.IDSelectorBitmap(n_base, faiss.swig_ptr(packed))
            params.sel = selector
        wanted = min(k * refine_factor(ivf), m)
        _, candidates = ivf.search(q, wanted, params=params)
        del packed, selector
        scores, found = self._rerank(q, candidates, k)
        if len(self.slots.tail):
            tail_slots = n_base + (np.arange(len(self.slots.tail)) if chosen is None
                                   else np.flatnonzero(chosen[n_base:]))
            if len(tail_slots):
                t_scores, t_idx = _top_k(q, self.slots.gather(tail_slots), k)
                t_found = np.where(t_idx >= 0, tail_slots[np.maximum(t_idx, 0)], -1)
                scores, found = _merge(scores, found, t_scores, t_found, k)
        return scores, found

    def _rerank(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k of each query's candidate slots (-1: none)."""
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        found = np.full((len(q), k), -1, dtype=np.int64)
        for i, row in enumerate(candidates):
            row = row[row >= 0]
            if not len(row):
                continue
            exact = self.slots.gather(row) @ q[i]
            top = np.argsort(-exact, kind="stable")[:k]
            scores[i, :len(top)], found[i, :len(top)] = exact[top], row[top]
        return scores, found


def _sorted_unique(positions: np.ndarray) -> np.ndarray:
    """`positions` sorted and unique; those from `np.flatnonzero` already are (no pass of `np.unique` over them)."""
    if len(positions) < 2 or bool((positions[1:] > positions[:-1]).all()):
        return positions
    return np.unique(positions)


def _by_index(q: np.ndarray, base: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among the rows `ids` of a float32 `base`, read in place (FAISS), -1 where fewer."""
    import faiss

    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    found = np.full((len(q), k), -1, dtype=np.int64)
    k_eff = min(k, len(ids))
    if k_eff:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vals = np.empty((len(q), k_eff), dtype=np.float32)
        out = np.empty((len(q), k_eff), dtype=np.int64)
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), faiss.swig_ptr(base), faiss.swig_ptr(ids), base.shape[1],
                                        len(q), len(base), len(ids), k_eff, faiss.swig_ptr(vals),
                                        faiss.swig_ptr(out), 0)  # 0: one list of ids for every query
        scores[:, :k_eff], found[:, :k_eff] = vals, out
    return scores, found


def _top_k(q: np.ndarray, vectors: np.ndarray, k: int, mask: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, indices into `vectors`) per query, optionally among `mask`ed rows; blocks of queries
    bound the score matrix's memory, and a float16 `vectors` is converted a block of rows at a time."""
    n = len(vectors)
    k_eff = min(k, n if mask is None else int(mask.sum()))
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    idx = np.full((len(q), k), -1, dtype=np.int64)
    if k_eff <= 0:
        return scores, idx
    step = max(1, SCORE_BLOCK // max(n, 1))
    for start in range(0, len(q), step):
        block = _scores(q[start:start + step], vectors)
        if mask is not None:
            block[:, ~mask] = -np.inf
        top = np.argpartition(-block, k_eff - 1, axis=1)[:, :k_eff]
        best = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-best, axis=1, kind="stable")
        scores[start:start + step, :k_eff] = np.take_along_axis(best, order, axis=1)
        idx[start:start + step, :k_eff] = np.take_along_axis(top, order, axis=1)
    return scores, idx


def _scores(q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    if vectors.dtype == np.float32:
        return q @ vectors.T
    out = np.empty((len(q), len(vectors)), dtype=np.float32)
    for start in range(0, len(vectors), GATHER_BLOCK):
        out[:, start:start + GATHER_BLOCK] = q @ vectors[start:start + GATHER_BLOCK].astype(np.float32).T
    return out


def _merge(s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two top-k lists per query merged into one (missing entries score -inf, index -1)."""
    scores = np.concatenate([s1, s2], axis=1)
    idx = np.concatenate([i1, i2], axis=1)
    scores = np.where(idx >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(idx, order, axis=1)
