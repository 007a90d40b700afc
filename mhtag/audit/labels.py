"""`audit_labels(csv)`: which labels to fix first, and the duplicates and split leaks of a labelled image set.

Two independent, out-of-sample witnesses judge every label: linear heads cross-fitted on frozen embeddings
(K folds; a row's own label never trains the model that judges it) and the similarity-weighted vote of its
nearest labelled neighbours from the other folds. cleanlab ranks and flags labels on the mean of the two.
The label table alone finds the labels that break a hierarchy the other rows follow (`rules`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mhtag.audit.rules import rule_breaks
from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_write_text
from mhtag.data.labels import FILE, ROW, SHA1, LabelTable, drop_unreadable, read_csv_frame, read_labels
from mhtag.data.schema import Attribute, LabelSchema, encode_tags, join_tags, split_tags
from mhtag.index.vectors import VectorIndex
from mhtag.inference.encoder import DEFAULT_BACKBONE, stored_features
from mhtag.inference.fusion import TAU_GRID, log_score, vote_matrix
from mhtag.models.backbones import Backbone, create_backbone
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.results import AuditResult, DuplicateGroup, Suspect
from mhtag.training.crossfit import fold_of, out_of_fold_probabilities

_logger = logging.getLogger(__name__)
NEAR_DUPLICATE = 0.97  # embedding cosine at or above which two images count as near-duplicates
SHOWN_NEIGHBOURS = 4


@dataclass
class Witnesses:
    """Per attribute, out-of-fold probabilities from the heads and shares from the neighbours."""

    head: dict[str, np.ndarray]
    neighbours: dict[str, np.ndarray]
    nearest: np.ndarray  # (rows, SHOWN_NEIGHBOURS) positions of the nearest labelled rows of other folds
    tau: dict[str, float]  # per attribute, the neighbour vote's temperature


def embed_table(table: LabelTable, backbone: Backbone, progress: bool = False) -> np.ndarray:
    """Frozen embeddings of every usable row, cached on disk."""
    return stored_features(backbone, table.frame[FILE].tolist(), table.frame[SHA1].tolist(), workers=0,
                           progress=progress)


def _backbone(model: str | Path | None, name: str, image_size: list[int] | None) -> tuple[Backbone, set[str]]:
    """A trained run's backbone (with its tag groups), or the named pretrained one at `image_size`."""
    if model is not None:
        tagger = tagger_from_checkpoint(load_checkpoint(model))
        return tagger.backbone, {a.name for a in tagger.schema.attributes if a.multi}
    return create_backbone(name, image_size=image_size), set()


def neighbour_witness(vectors: np.ndarray, labels: dict[str, np.ndarray], schema: LabelSchema, fold: np.ndarray,
                      targets: dict[str, np.ndarray], k: int = 20, tau: float | None = None) -> Witnesses:
    """Each row's vote from its k nearest rows of the other folds: its own label never votes for it. The vote's
    temperature is `tau`, or where None, per attribute the one of TAU_GRID whose out-of-fold votes give the rows'
    labels (`targets`) the highest mean log-probability, as the index tunes its fused vote."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    index = VectorIndex.of(unit)
    sims, pos = np.zeros((len(unit), k)), np.full((len(unit), k), -1, dtype=np.int64)
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        s, p = index.search(unit[held], k, rows=fold != f)
        sims[held, :s.shape[1]], pos[held, :p.shape[1]] = s, p
    shares, taus = {}, {}
    for a in schema.attributes:
        voters = np.where(pos >= 0, labels[a.name][np.maximum(pos, 0)], "")
        votes = {t: vote_matrix(sims, voters, a.classes, t, a.multi) for t in (TAU_GRID if tau is None else [tau])}
        y = targets[a.name]
        known = _labelled(y, a.multi)
        taus[a.name] = max(votes, key=lambda t: log_score(votes[t][known], y[known]))
        shares[a.name] = votes[taus[a.name]]
    return Witnesses({}, shares, pos[:, :SHOWN_NEIGHBOURS], taus)


def _stored_labels(frame, a: Attribute) -> np.ndarray:
    """Labels in the tag-codec form neighbour_shares reads: `|a|b|` for tags, the class otherwise."""
    if a.multi:
        return np.asarray([encode_tags(split_tags(v)) for v in frame[a.name]],
                          dtype=object)
    return np.asarray(["" if not isinstance(v, str) else v.strip() for v in frame[a.name]], dtype=object)


def score_attribute(a: Attribute, y: np.ndarray, head: np.ndarray, nbr: np.ndarray) -> tuple[np.ndarray, ...]:
    """(suspicion score, cleanlab's issue flag, suggested) for the rows with a label, from the mean of the
    two witnesses. `y`: class indices (single) or a 0/1 matrix (tags)."""
    from cleanlab import filter as cl_filter
    from cleanlab import rank as cl_rank
    from cleanlab.multilabel_classification import filter as ml_filter
    from cleanlab.multilabel_classification import rank as ml_rank

    has_votes = nbr.sum(1, keepdims=True) > 0
    both = np.where(has_votes, 0.5 * (head + nbr), head)
    if a.multi:
        labels = [list(np.flatnonzero(row)) for row in y]
        quality = ml_rank.get_label_quality_scores(labels, both)
        flagged = ml_filter.find_label_issues(labels, both)
        return 1 - quality, flagged, both >= 0.5
    both = both / np.maximum(both.sum(1, keepdims=True), 1e-12)
    quality = cl_rank.get_label_quality_scores(y, both)
    flagged = cl_filter.find_label_issues(y, both)
    return 1 - quality, flagged, both.argmax(1)


@dataclass
class AuditOptions:
    """How labels are judged: by out-of-fold heads and neighbours, on embeddings of this backbone and size."""

    attributes: list[str] | None = None  # audit only these (default: every attribute of the labels)
    folds: int = 5  # cross-fitting folds: a row's own label never trains the model that judges it
    k: int = 20  # labelled neighbours that vote
    near: float = NEAR_DUPLICATE  # embedding cosine at or above which two images are near-duplicates
    image_size: list[int] | None = None  # [height, width] to embed at (default: the backbone's own)
    epochs: int = 40  # of each fold's linear heads
    seed: int = 0
    vote_tau: float | None = None  # the neighbour vote's temperature; None: tuned per attribute

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise MhtagError(f"folds must be at least 2, not {self.folds}")


def audit_labels(labels: str | Path, images: str | Path | None = None, model: str | Path | None = None,
                 backbone: str = DEFAULT_BACKBONE, multilabel: list[str] | tuple = (), ignore: list[str] | tuple = (),
                 options: AuditOptions | None = None, progress: bool = False) -> AuditResult:
    """Suspect labels (sorted by score, highest first), duplicate groups (conflicting and split-crossing first),
    labels against a hierarchy, and a summary, for the labels CSV `labels`, embedded with `model`'s backbone or
    the pretrained `backbone`. See the module docstring."""
    o = options or AuditOptions()
    bb, tag_groups = _backbone(model, backbone, o.image_size)
    table = drop_unreadable(read_labels(labels, images, sorted(set(multilabel) | tag_groups), ignore),
                            progress=progress)
    for s in table.skipped[:20]:
        _logger.warning("skipped %s", s)
    names = _chosen(table, o.attributes)
    frame = table.frame
    schema, dropped = LabelSchema.fit(frame, names, table.multilabel)
    for name, why in dropped.items():
        _logger.warning("attribute %r is not audited: %s", name, why)
    if not schema.attributes:
        raise MhtagError(f"{labels}: no attribute with two or more classes to audit")
    x = embed_table(table, bb, progress)
    targets, _ = schema.encode(frame)
    fold = fold_of(len(frame), o.folds, o.seed)
    witnesses = neighbour_witness(x, {a.name: _stored_labels(frame, a) for a in schema.attributes}, schema, fold,
                                  targets, o.k, o.vote_tau)
    witnesses.head = out_of_fold_probabilities(x, targets, schema, fold, o.epochs, o.seed)
    suspects = []
    for a in schema.attributes:
        suspects += _suspects(a, frame, targets[a.name], witnesses)
    suspects.sort(key=lambda s: -s.score)
    duplicates = find_duplicates(table, x, schema.names, o.near)
    breaks = rule_breaks(frame, [a.name for a in schema.attributes if not a.multi])
    summary = {"rows": len(frame), "skipped": len(table.skipped), "folds": o.folds, "k": o.k,
               "vote_tau": witnesses.tau, "near_duplicate_cosine": o.near, "attributes": schema.names,
               "flagged": {a.name: sum(1 for s in suspects if s.attribute == a.name and s.flagged)
                           for a in schema.attributes},
               "duplicate_groups": len(duplicates),
               "duplicate_groups_crossing_splits": sum(g.crosses_splits for g in duplicates),
               "duplicate_groups_conflicting": sum(bool(g.conflicting) for g in duplicates),
               "rule_breaks": len(breaks)}
    return AuditResult(suspects=suspects, duplicates=duplicates, summary=summary, rule_breaks=breaks)


def _chosen(table: LabelTable, attributes: list[str] | None) -> list[str]:
    if not attributes:
        return table.attributes
    unknown = [a for a in attributes if a not in table.attributes]
    if unknown:
        raise MhtagError(f"unknown attribute(s) {unknown}; the labels have {', '.join(table.attributes)}")
    return list(attributes)


def _labelled(y: np.ndarray, multi: bool) -> np.ndarray:
    """Rows that carry a label to judge: a known class, or for a tag group at least one tag."""
    return y.sum(1) > 0 if multi else y >= 0


def _suspects(a: Attribute, frame, y: np.ndarray, w: Witnesses) -> list[Suspect]:
    head, nbr = w.head[a.name], w.neighbours[a.name]
    rows = np.flatnonzero(_labelled(y, a.multi))
    score, flagged, suggested = score_attribute(a, y[rows], head[rows], nbr[rows])
    paths = frame["path"].to_numpy()
    out = []
    for j, i in enumerate(rows):
        if a.multi:
            given_idx, sugg_idx = np.flatnonzero(y[i]), np.flatnonzero(suggested[j])
            given = [a.classes[c] for c in given_idx]
            sugg = [a.classes[c] for c in sugg_idx]
            hg, hs, ng, ns = _mean_at(head[i], given_idx), _mean_at(head[i], sugg_idx), \
                _mean_at(nbr[i], given_idx), _mean_at(nbr[i], sugg_idx)
        else:
            g, s = int(y[i]), int(suggested[j])
            given, sugg = a.classes[g], a.classes[s]
            hg, hs, ng, ns = float(head[i, g]), float(head[i, s]), float(nbr[i, g]), float(nbr[i, s])
        out.append(Suspect(path=str(paths[i]), row=int(frame[ROW].iat[i]), split=str(frame["split"].iat[i]),
                           attribute=a.name, given=given, suggested=sugg, score=float(score[j]),
                           flagged=bool(flagged[j]), head_given=hg, head_suggested=hs,
                           neighbours_given=ng, neighbours_suggested=ns,
                           neighbour_paths=[str(paths[n]) for n in w.nearest[i] if n >= 0]))
    return out


def _mean_at(p: np.ndarray, idx: np.ndarray) -> float:
    return float(p[idx].mean()) if len(idx) else 0.0


def find_duplicates(table: LabelTable, vectors: np.ndarray, attributes: list[str], near: float
                    ) -> list[DuplicateGroup]:
    """Byte-identical files, and near-duplicates (embedding cosine >= `near`), grouped; groups whose labels
    conflict come first, then those crossing splits."""
    frame = table.frame
    parent = list(range(len(frame)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        parent[root(i)] = root(j)

    hashes = frame[SHA1].tolist()  # the content hashes of the check that kept these rows
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        join(i, first.setdefault(h, i))
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims, pos = VectorIndex.of(unit).search(unit, 6)
    for i in range(len(unit)):
        for s, j in zip(sims[i], pos[i], strict=True):
            if j >= 0 and j != i and s >= near:
                join(i, int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(frame)):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        identical = len({hashes[m] for m in members}) == 1
        conflicting = [a for a in attributes if len({str(frame[a].iat[m]).strip() for m in members}) > 1]
        out.append(DuplicateGroup(paths=[str(frame["path"].iat[m]) for m in members],
                                  kind="identical" if identical else "near", similarity=None if identical else near,
                                  crosses_splits=len({frame["split"].iat[m] for m in members}) > 1,
                                  conflicting=conflicting))
    out.sort(key=lambda g: (not g.conflicting, not g.crosses_splits, -len(g.paths)))
    return out


def export_suspects(result: AuditResult, path: str | Path, flagged_only: bool = False) -> Path:
    """A CSV a person can edit: one row per suspect, then one per rule break (`source` says which; a break's
    `score` is the share of rows that follow its rule), `suggested` beside `given`, and an empty `fix` column."""
    def text(v: str | list[str]) -> str:
        return join_tags(v) if isinstance(v, list) else v

    rows = [{"path": s.path, "row": s.row, "attribute": s.attribute, "given": text(s.given),
             "suggested": text(s.suggested), "score": s.score, "flagged": s.flagged, "source": "witnesses"}
            for s in result.suspects if s.flagged or not flagged_only]
    rows += [{"path": b.path, "row": b.row, "attribute": b.attribute, "given": b.given, "suggested": b.expected,
              "score": round(b.support / b.rows, 4), "flagged": True, "source": f"rule: {b.rule}"}
             for b in result.rule_breaks]
    table = pd.DataFrame(rows, columns=["path", "row", "attribute", "given", "suggested", "score", "flagged",
                                        "source"])
    return atomic_write_text(path, table.assign(fix="").to_csv(index=False))


def apply_fixes(labels: str | Path, fixes: str | Path, out: str | Path) -> int:
    """Feed an edited export back: every row of `fixes` with a `fix` sets that attribute of that CSV row (the
    path must still match). Writes the corrected labels to `out` (atomically); returns how many changed."""
    frame = read_csv_frame(labels)
    edits = read_csv_frame(fixes) if Path(fixes).is_file() else None
    if edits is None or not {"row", "attribute", "fix"} <= set(edits.columns):
        raise MhtagError(f"{fixes}: not an export of `mhtag audit --export` (needs path, row, attribute, fix)")
    changed = 0
    for n, e in enumerate(edits.itertuples(index=False), start=2):
        if not isinstance(e.fix, str) or not e.fix.strip():
            continue
        i = int(e.row) - 2 if str(e.row).isdigit() else -1
        if not 0 <= i < len(frame) or str(frame.at[i, "path"]).strip() != str(e.path).strip():
            raise MhtagError(f"{fixes} row {n}: row {e.row} of {labels} is not {e.path!r}; export again")
        if e.attribute not in frame.columns:
            raise MhtagError(f"{fixes} row {n}: {labels} has no column {e.attribute!r}")
        frame.at[i, e.attribute] = e.fix.strip()
        changed += 1
    atomic_write_text(out, frame.to_csv(index=False))
    return changed
