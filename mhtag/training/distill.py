"""Knowledge distillation (Hinton et al., 2015): a student learns, for each training image, a mix of its label and
a trained teacher's calibrated probabilities for that image. The teacher is any run or `mhtag ensemble` with the
same heads and classes; with an ensemble as teacher, one backbone learns to answer close to many."""

from __future__ import annotations

import numpy as np
import torch

from mhtag.core.errors import MhtagError
from mhtag.data.schema import Attribute, LabelSchema
from mhtag.inference.encoder import stored_features
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.models.loss import soft_key
from mhtag.models.tagger import Tagger, feature_probabilities


def load_teacher(path: str, schema: LabelSchema) -> Tagger:
    """The trained run at `path`, refused unless it answers exactly `schema`'s heads and classes."""
    teacher = tagger_from_checkpoint(load_checkpoint(path)).eval()
    if teacher.schema.version != schema.version:
        theirs, ours = teacher.schema.names, schema.names
        detail = f"heads {theirs} vs {ours}" if theirs != ours else "the same heads with other classes"
        raise MhtagError(f"teacher {path}: its label vocabulary differs from this run's ({detail}); a teacher must "
                         "be trained on the same labels")
    return teacher


def mix_targets(attribute: Attribute, labels: np.ndarray, teacher: np.ndarray, share: float) -> np.ndarray:
    """(1 - share) x the labels (one-hot for a single-label head) + share x the teacher's probabilities. Rows
    without a known label keep a negative code in `labels` and are left out by the loss."""
    hard = labels.astype(np.float32) if attribute.multi \
        else np.eye(attribute.num_outputs, dtype=np.float32)[np.clip(labels, 0, None)] * (labels >= 0)[:, None]
    return (1.0 - share) * hard + share * teacher.astype(np.float32)


def teacher_targets(path: str, share: float, schema: LabelSchema, files: list[str], labels: dict[str, np.ndarray],
                    batch_size: int = 64, device: torch.device | None = None, workers: int | None = None,
                    progress: bool = False) -> dict[tuple[str, str], np.ndarray]:
    """Soft targets for every head, keyed by `soft_key`, for the rows `files` whose encoded labels are `labels`.
    The teacher embeds the images once (cached on disk like any embedding), without augmentation."""
    teacher = load_teacher(path, schema)
    features = stored_features(teacher.backbone, files, batch_size=batch_size, device=device, workers=workers,
                               progress=progress)
    probs = feature_probabilities(teacher, features)
    return {soft_key(a.name): mix_targets(a, labels[a.name], probs[a.name], share) for a in schema.attributes}
