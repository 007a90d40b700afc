"""Fusion of two witnesses per attribute: the head's probabilities and the similarity-weighted vote of labelled
neighbours, mixed with a per-attribute head weight and vote temperature tuned on validation rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mhtag.data.schema import AttributeSpec, decode_tags
from mhtag.results import AttributeAnswer, Fused

NEIGHBOUR_TAU = 0.05  # softmax temperature over cosine similarities for neighbour weights, where none was tuned
TAU_GRID = (0.005, 0.01, 0.02, 0.05, 0.1)  # low: the nearest neighbours decide (a product's own variants)
WEIGHT_GRID = np.linspace(0, 1, 11)


def neighbour_shares(sims: np.ndarray, labels: np.ndarray, multi: bool, tau: float = NEIGHBOUR_TAU
                     ) -> dict[str, float]:
    """Similarity-weighted vote of the neighbours that carry a label: {label or tag: share in [0, 1]}, highest
    first (equal shares: the label of the nearer neighbour first)."""
    labels = np.asarray(labels, dtype=object)
    seen = list(dict.fromkeys(t for v in labels if v for t in (decode_tags(v) if multi else [v])))
    if not seen:
        return {}
    shares = _votes(np.asarray(sims)[None], labels[None], seen, tau, multi)[0]
    return dict(sorted(zip(seen, map(float, shares), strict=True), key=lambda kv: -kv[1]))


def vote_matrix(sims: np.ndarray, labels: np.ndarray, classes: list[str], tau: float = NEIGHBOUR_TAU,
                multi: bool = False) -> np.ndarray:
    """`neighbour_shares` of every row at once, as a rows x classes matrix (a tag group: rows x tags, each tag's
    share of the vote). `sims` and `labels` are rows x k (a neighbour's label "" where it has none; pad missing
    neighbours with an empty label); votes for a label outside `classes` are dropped."""
    return _votes(sims, labels, classes, tau, multi).astype(np.float32)


def _votes(sims: np.ndarray, labels: np.ndarray, classes: list[str], tau: float, multi: bool) -> np.ndarray:
    labels = np.asarray(labels, dtype=object).reshape(np.shape(sims))
    known = labels != ""
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.where(known, sims, -np.inf)
        top = s.max(1, keepdims=True) if s.shape[1] else np.zeros((len(s), 1))
        w = np.exp((s - np.where(np.isfinite(top), top, 0.0)) / tau)
    w /= np.maximum(w.sum(1, keepdims=True), np.finfo(np.float64).tiny)  # a row with no known voter stays 0
    values, inverse = np.unique(labels, return_inverse=True)
    index = {c: j for j, c in enumerate(classes)}
    member = np.zeros((len(values), len(classes)))  # label value -> the classes (tags) it votes for
    for v, value in enumerate(values):
        for tag in decode_tags(value) if multi else [value] if value else []:
            if tag in index:
                member[v, index[tag]] = 1.0
    inverse = inverse.reshape(labels.shape)
    out = np.zeros((len(labels), len(classes)))
    for j in range(labels.shape[1]):
        out += w[:, j, None] * member[inverse[:, j]]
    return out


def fuse(head: dict[str, float], neighbours: dict[str, float], weight: float) -> dict[str, float]:
    """weight * head + (1 - weight) * neighbours over the union of labels; either side alone if the other is empty."""
    if not neighbours:
        return dict(head)
    if not head:
        return dict(neighbours)
    keys = set(head) | set(neighbours)
    fused = {k: weight * head.get(k, 0.0) + (1 - weight) * neighbours.get(k, 0.0) for k in keys}
    return dict(sorted(fused.items(), key=lambda kv: -kv[1]))


def _top(d: dict[str, float], n: int = 3) -> list[tuple[str, float]]:
    return [(k, round(float(v), 4)) for k, v in list(d.items())[:n]]


def head_distribution(a: AttributeSpec, probs: np.ndarray) -> dict[str, float]:
    order = np.argsort(-probs)
    return {a.classes[i]: float(probs[i]) for i in order}


def attribute_answer(a: AttributeSpec, head: dict[str, float], nbr: dict[str, float], weight: float,
                     thresholds: dict[str, float] | None = None) -> AttributeAnswer:
    fused = fuse(head, nbr, weight)
    if a.multi:
        cut = thresholds or {}
        label: str | list[str] = [t for t, p in fused.items() if p >= cut.get(t, 0.5)]
        confidence = min((fused[t] for t in label), default=0.0)
    else:
        label = next(iter(fused), "unknown")
        confidence = fused.get(label, 0.0)
    agree = next(iter(head)) == next(iter(nbr)) if head and nbr else None
    return AttributeAnswer(head=_top(head), neighbours=_top(nbr),
                           fused=Fused(label=label, confidence=round(float(confidence), 4)), agree=agree)


def log_score(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean log-probability of the truth per row (a proper score: higher is better). `y` holds class indices, or
    for a tag group a rows x tags 0/1 matrix, scored as the sum of its tags' Bernoulli log-likelihoods."""
    if not len(y):
        return 0.0
    if y.ndim == 2:
        p = np.clip(probs, 1e-6, 1 - 1e-6)
        return float(np.where(y > 0, np.log(p), np.log1p(-p)).sum(1).mean())
    return float(np.log(np.clip(probs[np.arange(len(y)), y], 1e-6, 1.0)).mean())


def tune_fusion(head: np.ndarray, votes: dict[float, np.ndarray], y: np.ndarray) -> tuple[float, float]:
    """(head weight, vote temperature): of the votes made at each temperature, the pair whose mix with the head
    gives the truth the highest mean log-probability (`log_score`: classes or tags). A proper score, unlike
    accuracy or macro-F1, rewards every row's probability, so the choice holds on rows it was not tuned on
    (benchmarks/fusion_val.py)."""
    best = (-np.inf, 1.0, NEIGHBOUR_TAU)
    for tau, nbr in votes.items():
        w = tune_head_weight(head, nbr, y, log_score)
        best = max(best, (log_score(w * head + (1 - w) * nbr, y), w, tau), key=lambda b: b[0])
    return best[1], best[2]


def tune_head_weight(head: np.ndarray, neighbours: np.ndarray, y: np.ndarray,
                     score: Callable[[np.ndarray, np.ndarray], float], grid: np.ndarray = WEIGHT_GRID) -> float:
    """The head weight w maximising `score(w * head + (1 - w) * neighbours, y)` (rows: probability vectors)."""
    scores = [score(w * head + (1 - w) * neighbours, y) for w in grid]
    return round(float(grid[int(np.argmax(scores))]), 3)
