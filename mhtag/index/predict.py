"""Prediction against an index: the head's probabilities, the vote of the nearest labelled neighbours, and
their fusion, per attribute. With no trained heads it labels images from their neighbours alone.

`Predictor` loads the encoder and the index once (the server keeps one); `predict(paths, db)` is the one-shot
form the CLI uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mhtag.core.config import DEFAULT_BACKBONE
from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.core.storage import location
from mhtag.data.images import walk_images
from mhtag.data.labels import absolute
from mhtag.data.schema import decode_tags
from mhtag.index.columns import StoredAttribute, text_column
from mhtag.index.guard import guard_index
from mhtag.index.history import LabelHistory, shown
from mhtag.index.meta import IndexMeta, read_meta
from mhtag.index.neighbours import labelled_index
from mhtag.index.store import DEFAULT_DB, open_table, read_columns, snapshot
from mhtag.inference.fusion import NEIGHBOUR_TAU, attribute_answer, head_distribution, neighbour_shares
from mhtag.results import Failure, ImagePrediction, PredictResult, RowDetail

if TYPE_CHECKING:
    from mhtag.inference.encoder import Encoder

_logger = logging.getLogger(__name__)
SHOWN_NEIGHBOURS = 6  # the nearest labelled rows an answer names, for their thumbnails


def check_compatible(meta: IndexMeta, enc: Encoder, db: Path) -> None:
    """Refuse to mix embeddings of different backbones in one index. Models that share a backbone (a probe
    retrained on corrected labels) share the embedding space: the vectors stay, the predictions are refreshed."""
    if meta.model_id == enc.model_id and meta.dim == enc.dim or meta.space is not None and meta.space == enc.space:
        return
    if meta.model_path and enc.model_path == meta.model_path:
        raise MhtagError(f"index {db} was built with {meta.model_path}, and that file has changed since "
                         f"(retrained or replaced). Re-embed with `mhtag index DIR --db {db} --rebuild`, or restore "
                         "the model it was built with")
    built = meta.model_path or f"backbone {meta.backbone}"
    given = enc.model_path or f"backbone {enc.backbone}"
    raise MhtagError(f"index {db} was built with {built} (embedding size {meta.dim}); {given} (embedding size "
                     f"{enc.dim}) does not match it. Use the index's model, or `mhtag index DIR --db {db} "
                     "--rebuild` to re-embed with the new one")


@dataclass
class Words:
    """What prediction asks of the text tower: zero-shot attributes, and a description in caption phrases."""

    zero_shot: list = field(default_factory=list)  # `inference.words.ZeroShot`s
    describe: bool = False


def checkpoint_path(model: str | Path | None) -> str | None:
    """A run folder or checkpoint file as the checkpoint file (where a text tower lies beside it)."""
    if model is None:
        return None
    path = Path(model)
    return str(path / "best.pt") if path.is_dir() else str(path)


class Predictor:
    """Everything prediction needs, loaded once: the encoder, the index meta and its labelled rows."""

    def __init__(self, db: str | Path = DEFAULT_DB, model: str | Path | None = None, k: int | None = None,
                 min_similarity: float = 0.0, encoder: Encoder | None = None, words: Words | None = None):
        self.db = location(db)
        self.meta = read_meta(self.db)
        if self.meta is None and model is None and encoder is None:
            raise MhtagError(f"no index at {self.db} and no --model: index some images first, or pass --model RUN")
        if k is not None and k < 1:
            raise MhtagError(f"k must be at least 1, not {k}")
        tuned_k = self.meta.fusion_k if self.meta else 20
        if k is not None and k != tuned_k and self.meta and self.meta.fusion:
            _logger.warning("k=%d differs from the k=%d the fusion weights were tuned with", k, tuned_k)
        self.k = k if k is not None else tuned_k
        self.min_similarity = min_similarity
        self.model = model
        self.words = words or Words()
        self._encoder = encoder
        m = self.meta
        if m is None or model is not None:
            self.encoder  # noqa: B018 - loaded now: without an index it defines the attributes, a model is checked
        if m is not None:
            self.attributes = m.attributes
        elif self.encoder.tagger is None:
            raise MhtagError("a bare backbone predicts nothing without an index of labelled images")
        else:
            self.attributes = [StoredAttribute(a.name, a.kind, list(a.classes), has_head=True)
                               for a in self.encoder.tagger.schema.attributes]

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use: a service that only searches and shows rows never loads it (nor
        torch)."""
        if self._encoder is None:
            from mhtag.inference.encoder import load_encoder  # here: torch loads with the model, not before

            m = self.meta
            self._encoder = load_encoder(self.model if self.model is not None else m.model_path,
                                         m.backbone if m else DEFAULT_BACKBONE)
            if m is not None:
                check_compatible(m, self._encoder, self.db)
        return self._encoder

    def _tower(self):
        """The text tower kept with the model (None without one); a request for words without one is refused."""
        from mhtag.inference.words import require_tower, text_tower

        path = self.model if self.model is not None else self.meta.model_path if self.meta else None
        if self.words.zero_shot or self.words.describe:
            return require_tower(checkpoint_path(path), "--zero-shot / --describe")
        return text_tower(checkpoint_path(path))

    def _with_zero_shot(self, feats: np.ndarray, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`probs` with every zero-shot attribute's (asked for, or stored in the index) that it lacks."""
        from mhtag.index.zeroshot import zero_shot_of

        asked = list(self.words.zero_shot) + [zero_shot_of(a) for a in self.attributes if a.zero_shot]
        missing = [zs for zs in asked if zs.name not in probs]
        if not missing:
            return probs
        tower = self._tower()
        return probs | {zs.name: zs.probabilities(tower, feats) for zs in missing}

    def _described(self, feats: np.ndarray) -> list[list[tuple[str, float]]]:
        if not self.words.describe:
            return [[] for _ in range(len(feats))]
        from mhtag.inference.words import describe

        return describe(self._tower(), feats)

    def _answered(self) -> list[StoredAttribute]:
        """The index's attributes, then the zero-shot ones asked for that it does not hold."""
        held = {a.name for a in self.attributes}
        asked = [StoredAttribute(zs.name, "single", list(zs.values), has_head=True, zero_shot=True)
                 for zs in self.words.zero_shot if zs.name not in held]
        return list(self.attributes) + asked

    def _thresholds(self) -> dict[str, list[float]]:
        """Each tag group head's cuts: kept in the index meta (older indexes: from the model)."""
        if self.meta is not None and self.model is None and all(a.thresholds for a in self.attributes
                                                                if a.multi and a.has_head):
            return {a.name: a.thresholds for a in self.attributes if a.multi and a.has_head}
        return self.encoder.tagger.thresholds_ if self.encoder.tagger else {}

    def predict_files(self, paths: list[str | Path], batch_size: int = 64, progress: bool = False
                      ) -> PredictResult:
        walk = walk_images(paths)
        files = [str(f) for f in walk.files]
        result = PredictResult(failed=[Failure(path=p, reason=r) for p, r in walk.problems])
        if not files:
            raise MhtagError(f"no image files in {', '.join(map(str, paths))}")
        for batch in self.encoder.encode_files(files, batch_size, progress=progress, description="predicting"):
            result.failed += [Failure(path=files[i], reason=r) for i, r in batch.failed]
            own = [str(absolute(files[i])) for i in batch.ok]
            result.predictions += self.answer(batch.embeddings, batch.probs, [files[i] for i in batch.ok], own)
        return result

    def answer(self, feats: np.ndarray, probs: dict[str, np.ndarray], names: list[str],
               own_paths: list[str | None]) -> list[ImagePrediction]:
        """One prediction per row of `feats`; an indexed image (`own_paths`) never votes for itself."""
        lab = labelled_index(self.db) if self.meta is not None else None
        thresholds = self._thresholds()
        probs = self._with_zero_shot(feats, probs)
        described = self._described(feats)
        attributes = self._answered()
        sims = pos = None
        if lab is not None and len(feats):
            sims, pos = lab.vectors.search(feats, self.k + 1, lab.positions)  # +1: room to drop itself
        out = []
        for row, name in enumerate(names):
            near = None
            if lab is not None:
                keep = (pos[row] >= 0) & (lab.paths[np.maximum(pos[row], 0)] != own_paths[row])
                s, p = sims[row][keep][:self.k], pos[row][keep][:self.k]
                if len(s) and s.max() >= self.min_similarity:
                    near = (s, p)
            answers = {}
            for a in attributes:
                head = head_distribution(a, probs[a.name][row]) if a.has_head and a.name in probs else {}
                tau = self.meta.fusion_tau.get(a.name, NEIGHBOUR_TAU) if self.meta else NEIGHBOUR_TAU
                nbr = neighbour_shares(near[0], lab.labels[a.name][near[1]], a.multi, tau) \
                    if near and a.has_labels else {}
                weight = self.meta.fusion.get(a.name, 0.5) if self.meta else 1.0
                th = dict(zip(a.classes, thresholds.get(a.name, []), strict=False)) if a.multi else None
                answer = attribute_answer(a, head, nbr, weight, th)
                answers[a.name] = answer.model_copy(update={"zero_shot": True}) if a.zero_shot else answer
            labels = lab.known_labels(own_paths[row], {a.name for a in self.attributes if a.multi}) if lab else {}
            voters = [int(r) for r in lab.vectors.rids[near[1][:SHOWN_NEIGHBOURS]]] if near else []
            out.append(ImagePrediction(path=name, attributes=answers, labels=labels, neighbour_ids=voters,
                                       described=described[row]))
        return out


    def row(self, rid: int) -> RowDetail:
        """An indexed row: its facts, known labels, and per attribute the stored head probabilities, the vote
        of its labelled neighbours (itself excluded) and their fusion."""
        snap = snapshot(self.db)
        pos = snap.position(rid)
        if pos is None or self.meta is None:
            raise NotFoundError(f"no row with id {rid} in index {self.db}")
        texts = {t: text_column(t) for t in self.meta.text_columns}
        columns = ["rid", "path", "rel", "size", "width", "height", "split", *texts.values()] + \
            [f.name for a in self.attributes for f in a.columns()]
        row = read_columns(open_table(self.db), columns, where=f"rid = {int(rid)}").to_pylist()[0]
        probs = {a.name: np.asarray([row[a.probs]], dtype=np.float32) for a in self.attributes if a.has_head}
        answer = self.answer(snap.vectors.at([pos]), probs, [row["path"]], [row["path"]])[0]
        described = answer.described or self._row_description(snap.vectors.at([pos]))
        labels = {a.name: decode_tags(row[a.label]) if a.multi else row[a.label]
                  for a in self.attributes if a.has_labels and row[a.label]}
        multi = {a.name for a in self.attributes if a.multi}
        history = [shown(c, c.attribute in multi) for c in LabelHistory(self.db, self.meta).of_row(int(rid))]
        return RowDetail(id=int(rid), path=row["path"], rel=row["rel"], size=row["size"], width=row["width"],
                         height=row["height"], split=row["split"], labels=labels, attributes=answer.attributes,
                         texts={t: row[c] or "" for t, c in texts.items()}, neighbour_ids=answer.neighbour_ids,
                         described=described, history=history)

    def _row_description(self, feats: np.ndarray) -> list[tuple[str, float]]:
        """A row's detail describes its image where the model has a tower with phrases (else nothing)."""
        from mhtag.inference.words import describe

        tower = self._tower()
        return describe(tower, feats)[0] if tower is not None and tower.phrases else []


@guard_index
def predict(paths: list[str | Path], db: str | Path = DEFAULT_DB, model: str | Path | None = None,
            k: int | None = None, min_similarity: float = 0.0, batch_size: int = 64,
            progress: bool = False, words: Words | None = None) -> PredictResult:
    """Per image and attribute: the head's top 3, the neighbours' top 3, the fused answer and `agree`; with
    `words`, zero-shot attributes and the image described in its catalogue's phrases."""
    return Predictor(db, model, k, min_similarity, words=words).predict_files(paths, batch_size, progress)
