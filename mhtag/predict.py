"""Prediction: head probabilities, the vote of the nearest labelled neighbours in the index, and their fusion.

`predict(paths, db)` answers, per attribute: the head's top 3, the neighbours' top 3 (similarity-weighted
shares), a fused label whose head weight was tuned on validation rows at index time, and whether head and
neighbours agree. With no trained heads it labels images from their neighbours alone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhtag.backbones import Backbone, create_backbone
from mhtag.data import IMAGE_EXTENSIONS, absolute
from mhtag.embed import embed_batches, resolve_data_config
from mhtag.errors import MhtagError
from mhtag.metrics import single_label_metrics
from mhtag.model import Tagger, load_checkpoint, tagger_from_checkpoint
from mhtag.runtime import default_device
from mhtag.store import (
    DEFAULT_DB,
    IndexMeta,
    StoredAttribute,
    VectorIndex,
    decode_tags,
    open_table,
    read_columns,
    read_meta,
    require_meta,
    snapshot,
    write_meta,
)

_logger = logging.getLogger(__name__)
DEFAULT_BACKBONE = "efficientnet_lite0"
NEIGHBOUR_TAU = 0.05  # softmax temperature over cosine similarities for neighbour weights


@dataclass
class Encoder:
    """What turns an image into a row: a trained tagger (embedding + heads) or a bare backbone."""

    module: Tagger | Backbone
    model_id: str
    model_path: str | None
    backbone: str
    data_config: dict[str, Any]

    @property
    def tagger(self) -> Tagger | None:
        return self.module if isinstance(self.module, Tagger) else None

    @property
    def dim(self) -> int:
        return self.module.num_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L2-normalised embeddings, head probabilities)."""
        if self.tagger is None:
            return torch.nn.functional.normalize(self.module(x).float(), dim=1), {}
        f = self.tagger.forward_features(x)
        probs = self.tagger.probabilities(self.tagger.forward_heads(f))
        return torch.nn.functional.normalize(f.float(), dim=1), probs


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_encoder(model: str | Path | None = None, backbone: str = DEFAULT_BACKBONE) -> Encoder:
    """A trained run (folder or checkpoint) or, without one, the pretrained `backbone` alone."""
    if model is None:
        bb = create_backbone(backbone)
        cfg = resolve_data_config(bb)
        return Encoder(bb.eval(), f"backbone:{bb.name}", None, bb.name, cfg)
    path = Path(model)
    path = path / "best.pt" if path.is_dir() else path
    tagger = tagger_from_checkpoint(load_checkpoint(path))
    return Encoder(tagger, f"model:{_file_digest(path)}", str(path.resolve()), tagger.backbone.name,
                   tagger.backbone.data_config)


def check_compatible(meta: IndexMeta, enc: Encoder, db: Path) -> None:
    """Refuse to mix embeddings of different models in one index."""
    if meta.model_id == enc.model_id and meta.dim == enc.dim:
        return
    built = meta.model_path or f"backbone {meta.backbone}"
    given = enc.model_path or f"backbone {enc.backbone}"
    raise MhtagError(f"index {db} was built with {built} (embedding size {meta.dim}); {given} (embedding size "
                     f"{enc.dim}) does not match it. Use the index's model, or `mhtag index DIR --db {db} "
                     "--rebuild` to re-embed with the new one")


@torch.no_grad()
def encode_files(enc: Encoder, files: list[str], batch_size: int = 64, workers: int | None = None,
                 progress: bool = False, description: str = "embedding"):
    """Yield (embeddings np, {attr: probs np}, ok indices, [(index, reason)]) per batch."""
    device = default_device()
    enc.module.to(device).eval()
    for out, ok, bad in embed_batches(enc.forward, files, enc.data_config, batch_size, device, workers, progress,
                                      description):
        if out is None:
            yield np.zeros((0, enc.dim), np.float32), {}, ok, bad
            continue
        feats, probs = out
        yield feats.cpu().numpy(), {k: v.float().cpu().numpy() for k, v in probs.items()}, ok, bad


def image_files(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively for images; a missing path is a user error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.exists():
            out.append(p)
        else:
            raise MhtagError(f"{p}: no such file or folder")
    return out


# ---------------------------------------------------------------- neighbours


@dataclass
class LabelledIndex:
    """The index's rows with what neighbour voting needs: vectors, paths, known labels and splits per row."""

    vectors: VectorIndex  # every row of the snapshot
    positions: np.ndarray  # the rows with at least one known label: the only ones that vote
    paths: np.ndarray
    labels: dict[str, np.ndarray]  # attribute -> label per row ("" = unknown)
    splits: np.ndarray


def labelled_index(db: str | Path) -> LabelledIndex | None:
    meta = require_meta(db)
    labelled = [a for a in meta.attributes if a.has_labels]
    if not labelled:
        return None
    snap = snapshot(db)
    column = lambda name: np.asarray(snap.rows.column(name).to_pylist(), dtype=object)  # noqa: E731
    labels = {a.name: column(f"label_{a.column}") for a in labelled}
    positions = np.flatnonzero(np.logical_or.reduce([v != "" for v in labels.values()]))
    if len(positions) == 0:
        return None
    return LabelledIndex(snap.vectors, positions, column("path"), labels, column("split"))


def neighbour_shares(sims: np.ndarray, labels: np.ndarray, kind: str, tau: float = NEIGHBOUR_TAU
                     ) -> dict[str, float]:
    """Similarity-weighted vote of the neighbours that carry a label: {label or tag: share in [0, 1]}."""
    known = labels != ""
    if not known.any():
        return {}
    s = sims[known]
    w = np.exp((s - s.max()) / tau)
    w /= w.sum()
    shares: dict[str, float] = {}
    for weight, value in zip(w, labels[known], strict=True):
        for tag in decode_tags(value) if kind == "multi" else [value]:
            shares[tag] = shares.get(tag, 0.0) + float(weight)
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def fuse(head: dict[str, float], neighbours: dict[str, float], weight: float) -> dict[str, float]:
    """weight * head + (1 - weight) * neighbours over the union of labels; either side alone if the other is empty."""
    if not neighbours:
        return dict(head)
    if not head:
        return dict(neighbours)
    keys = set(head) | set(neighbours)
    fused = {k: weight * head.get(k, 0.0) + (1 - weight) * neighbours.get(k, 0.0) for k in keys}
    return dict(sorted(fused.items(), key=lambda kv: -kv[1]))


def _top(d: dict[str, float], n: int = 3) -> list[list[Any]]:
    return [[k, round(float(v), 4)] for k, v in list(d.items())[:n]]


def attribute_answer(a: StoredAttribute, head: dict[str, float], nbr: dict[str, float], weight: float,
                     thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    fused = fuse(head, nbr, weight)
    if a.kind == "multi":
        cut = thresholds or {}
        tags = [t for t, p in fused.items() if p >= cut.get(t, 0.5)]
        label = tags
        confidence = round(float(min((fused[t] for t in tags), default=0.0)), 4)
    else:
        label = next(iter(fused), "unknown")
        confidence = round(float(fused.get(label, 0.0)), 4)
    agree = None
    if head and nbr:
        agree = next(iter(head)) == next(iter(nbr))
    return {"head": _top(head), "neighbours": _top(nbr), "fused": {"label": label, "confidence": confidence},
            "agree": agree}


def _head_dist(a: StoredAttribute, probs: np.ndarray) -> dict[str, float]:
    order = np.argsort(-probs)
    return {a.classes[i]: float(probs[i]) for i in order}


def predict(paths: list[str | Path], db: str | Path = DEFAULT_DB, model: str | Path | None = None, k: int = 20,
            min_similarity: float = 0.0, batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """`{"predictions": [{"path", "attributes": {attr: {head, neighbours, fused, agree}}}], "failed": [...]}`."""
    db = Path(db)
    meta = read_meta(db)
    if meta is None and model is None:
        raise MhtagError(f"no index at {db} and no --model: index some images first, or pass --model RUN")
    enc = load_encoder(model if model is not None else meta.model_path, meta.backbone if meta else DEFAULT_BACKBONE)
    if meta is not None:
        check_compatible(meta, enc, db)
        attributes = meta.attributes
    else:
        attributes = [StoredAttribute(a.name, a.kind, "", a.classes, True) for a in enc.tagger.schema.attributes]
    lab = labelled_index(db) if meta is not None else None
    files = [str(f) for f in image_files(paths)]
    thresholds = enc.tagger.thresholds_ if enc.tagger else {}
    out, failed = [], []
    for feats, probs, ok, bad in encode_files(enc, files, batch_size, progress=progress, description="predicting"):
        failed += [{"path": files[i], "reason": r} for i, r in bad]
        # one extra neighbour, since an indexed image must not vote for itself
        sims, pos = lab.vectors.search(feats, k + 1, lab.positions) if lab is not None else (None, None)
        for row, i in enumerate(ok):
            answers = {}
            near = None
            if lab is not None:
                keep = (pos[row] >= 0) & (lab.paths[np.maximum(pos[row], 0)] != str(absolute(files[i])))
                s, p = sims[row][keep][:k], pos[row][keep][:k]
                if len(s) and s.max() >= min_similarity:
                    near = (s, p)
            for a in attributes:
                head = _head_dist(a, probs[a.name][row]) if a.has_head and a.name in probs else {}
                nbr = neighbour_shares(near[0], lab.labels[a.name][near[1]], a.kind) if near and a.has_labels else {}
                weight = meta.fusion.get(a.name, 0.5) if meta else 1.0
                th = dict(zip(a.classes, thresholds.get(a.name, []), strict=False)) if a.kind == "multi" else None
                answers[a.name] = attribute_answer(a, head, nbr, weight, th)
            out.append({"path": files[i], "attributes": answers})
    return {"predictions": out, "failed": failed}


# ---------------------------------------------------------------- fusion calibration


def calibrate_fusion(db: str | Path, k: int = 20, grid: np.ndarray | None = None) -> dict[str, float]:
    """Per attribute with both a head and known labels: the head weight that maximises macro-F1 when
    validation rows are predicted from their stored head probabilities and their training-row neighbours."""
    db = Path(db)
    meta = require_meta(db)
    both = [a for a in meta.attributes if a.has_head and a.has_labels and a.kind == "single"]
    lab = labelled_index(db)
    if not both or lab is None:
        return {}
    is_val = lab.splits[lab.positions] == "val"
    val, train = lab.positions[is_val], lab.positions[~is_val]
    if len(val) == 0 or len(train) == 0:
        _logger.info("no validation rows among the labelled images: fusion weights stay at 0.5")
        return {}
    arrow = read_columns(open_table(db), ["rid"] + [f"probs_{a.column}" for a in both])
    row_of = {r: i for i, r in enumerate(arrow.column("rid").to_pylist())}
    val_rows = [row_of[r] for r in lab.vectors.rids[val]]
    sims, pos = lab.vectors.search(lab.vectors.vectors[val], k, rows=train)
    grid = np.linspace(0, 1, 11) if grid is None else grid
    weights: dict[str, float] = {}
    for a in both:
        probs = np.asarray(arrow.column(f"probs_{a.column}").to_pylist(), dtype=np.float32)[val_rows]
        truth = lab.labels[a.name][val]
        known = truth != ""
        index = {c: j for j, c in enumerate(a.classes)}
        y = np.array([index.get(t, -1) for t in truth])
        nbr = np.zeros_like(probs)
        for r in range(len(val)):
            keep = pos[r] >= 0
            for label, share in neighbour_shares(sims[r][keep], lab.labels[a.name][pos[r][keep]], "single").items():
                if label in index:
                    nbr[r, index[label]] = share
        scores = [single_label_metrics((w * probs + (1 - w) * nbr)[known], y[known]).get("macro_f1", 0.0)
                  for w in grid]
        weights[a.name] = round(float(grid[int(np.argmax(scores))]), 3)
    meta.fusion.update(weights)
    meta.fusion_k = k
    write_meta(db, meta)
    return weights
