"""Words against images, through a text tower (`models.text`): a sentence as a query vector, an attribute's values
scored zero-shot from prompts, and an image described in the phrases of its catalogue's captions. Images enter as
the index's own vectors (normalised backbone features, or an open_clip model's image embeddings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mhtag.core.errors import MhtagError
from mhtag.models import TEXT_TOWER

if TYPE_CHECKING:  # torch loads with a tower, not with this module: a search-only server never needs it
    from mhtag.models.text import TextTower

# Several prompts per value, averaged, as CLIP's zero-shot evaluations do. "{}" alone suits a tower learned from
# product titles (its captions are such words); the others suit a CLIP model's web captions.
TEMPLATES = ("{}", "a photo of {}", "a product photo of {}", "{}, product image")
DESCRIBED = 5


def tower_file(model_path: str | Path | None) -> Path | None:
    if model_path is None:
        return None
    path = Path(model_path)
    return (path if path.is_dir() else path.parent) / TEXT_TOWER


@lru_cache(maxsize=4)
def _cached(path: str, stamp: int) -> TextTower | None:
    from mhtag.models.text import load_text_tower

    return load_text_tower(Path(path).parent)


def text_tower(model_path: str | Path | None) -> TextTower | None:
    """The text tower saved beside a model, loaded once per file version; None without one."""
    path = tower_file(model_path)
    if path is None or not path.is_file():
        return None
    return _cached(str(path), path.stat().st_mtime_ns)


def require_tower(model_path: str | Path | None, what: str) -> TextTower:
    tower = text_tower(model_path)
    if tower is None:
        raise MhtagError(f"{what} needs a text tower, and {model_path or 'this index (no model)'} has none: train "
                         "one from a caption column (`mhtag train --captions COL`), or use an open_clip backbone")
    return tower


def text_vector(tower: TextTower, text: str, dim: int) -> np.ndarray:
    """A sentence as a query vector of the image space (size `dim`, checked)."""
    if not isinstance(text, str) or not text.strip():
        raise MhtagError("a text query needs some words")
    vector = tower.encode([text]).numpy()[0]
    if len(vector) != dim:
        raise MhtagError(f"the text tower answers in {len(vector)} dimensions; the index holds {dim}")
    return vector


@dataclass
class ZeroShot:
    """An attribute answered from prompts: its values, the prompt templates, and a softmax temperature (the
    tower's own, or one calibrated on labelled rows)."""

    name: str
    values: list[str]
    templates: Sequence[str] = TEMPLATES
    temperature: float | None = None
    _vectors: np.ndarray | None = field(default=None, repr=False)

    def class_vectors(self, tower: TextTower) -> np.ndarray:
        """Per value, the mean of its prompts' vectors, normalised."""
        if self._vectors is None:
            prompts = [t.format(v) for v in self.values for t in self.templates]
            x = tower.encode(prompts).numpy().reshape(len(self.values), len(self.templates), -1).mean(1)
            self._vectors = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return self._vectors

    def scale(self, tower: TextTower) -> float:
        return 1.0 / self.temperature if self.temperature else float(tower.logit_scale.detach().exp().clamp(max=100))

    def probabilities(self, tower: TextTower, images: np.ndarray, scale: float | None = None) -> np.ndarray:
        """rows x values: a softmax over the values' similarities to each image vector."""
        logits = (scale or self.scale(tower)) * (np.asarray(images, dtype=np.float32) @ self.class_vectors(tower).T)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def calibrate(self, tower: TextTower, images: np.ndarray, labels: Sequence[str]) -> float | None:
        """The temperature with the highest mean log-probability of the known `labels` (rows of `images`);
        None with fewer than ten known labels among the values."""
        index = {v: j for j, v in enumerate(self.values)}
        known = np.array([index.get(v, -1) for v in labels])
        rows = np.flatnonzero(known >= 0)
        if len(rows) < 10:
            return None
        best, chosen = -np.inf, None
        for temperature in np.geomspace(0.005, 1.0, 40):
            p = self.probabilities(tower, images[rows], 1.0 / temperature)
            score = float(np.log(np.maximum(p[np.arange(len(rows)), known[rows]], 1e-12)).mean())
            if score > best:
                best, chosen = score, float(temperature)
        self.temperature = chosen
        return chosen


def parse_zero_shot(spec: str) -> ZeroShot:
    """'pattern=striped,checked,solid' -> ZeroShot("pattern", [...])."""
    name, _, values = spec.partition("=")
    chosen = list(dict.fromkeys(v.strip() for v in values.split(",") if v.strip()))
    if not name.strip() or len(chosen) < 2:
        raise MhtagError(f"--zero-shot {spec!r}: give NAME=VALUE,VALUE,... with at least two values")
    return ZeroShot(name.strip(), chosen)


def describe(tower: TextTower, images: np.ndarray, top: int = DESCRIBED) -> list[list[tuple[str, float]]]:
    """Per image vector, the tower's mined phrases most aligned with it, with their cosine scores."""
    if not tower.phrases:
        raise MhtagError("this text tower has no phrases to describe with (it was not learned from captions)")
    phrases = _phrase_vectors(tower)
    sims = np.asarray(images, dtype=np.float32) @ phrases.T
    out = []
    for row in sims:
        best = np.argsort(-row, kind="stable")[:top]
        out.append([(tower.phrases[j], round(float(row[j]), 4)) for j in best])
    return out


def _phrase_vectors(tower: TextTower) -> np.ndarray:
    cached = getattr(tower, "_phrase_vectors", None)
    if cached is None:
        cached = tower.encode(tower.phrases).numpy()
        tower._phrase_vectors = cached
    return cached
