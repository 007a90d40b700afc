"""Text towers: words mapped into the space of the index's image vectors, so that a sentence is searched, and an
attribute's values scored, with the image vectors already stored (no second vector per image).

Two kinds, one interface (`encode(texts)` -> L2-normalised rows of the image space's size):
- `LearnedTextTower`: learned from a catalogue's own captions (`mhtag train --captions COL`, see
  `training.captions`): open_clip's BPE tokenizer (its vocabulary ships inside the package) and a small text
  transformer (open_clip's `TextTransformer`) ending in a linear map into the image space. The image side is
  locked (LiT, Zhai et al. 2022): the backbone's normalised features, which the index stores anyway.
- `ClipTextTower`: an open_clip model's own text tower and tokenizer, for an index built on that model's image
  tower (`open_clip/ARCH@TAG`): its image embeddings are the index's vectors.

A tower is saved beside the model as `text_tower.pt` (tensors and plain settings only: loaded with
`weights_only=True`, so the file cannot run code), with the phrases mined from the captions (`describe`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_path
from mhtag.models import TEXT_TOWER

TOKENIZER = "ViT-B-32"  # open_clip's BPE tokenizer (the vocabulary every CLIP model shares)
BATCH = 256


def tokenizer(context_length: int):
    import open_clip

    tok = open_clip.get_tokenizer(TOKENIZER)
    return lambda texts: tok([t if isinstance(t, str) else "" for t in texts], context_length=context_length)


class LearnedTextTower(nn.Module):
    """A small text transformer over open_clip's tokens, into the image space (`dim`)."""

    kind = "learned"

    def __init__(self, dim: int, width: int = 256, layers: int = 2, heads: int = 4, context_length: int = 32):
        from open_clip.transformer import TextTransformer

        super().__init__()
        self.settings = {"dim": dim, "width": width, "layers": layers, "heads": heads,
                         "context_length": context_length}
        self.transformer = TextTransformer(context_length=context_length, width=width, heads=heads, layers=layers,
                                           output_dim=dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's start: a temperature of 0.07
        self.tokenize = tokenizer(context_length)
        self.phrases: list[str] = []

    @property
    def dim(self) -> int:
        return self.settings["dim"]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.transformer(tokens), dim=-1)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Normalised rows in the image space, one per text (truncated at the tokenizer's context)."""
        self.eval()
        out = [self(self.tokenize(texts[i:i + BATCH])) for i in range(0, len(texts), BATCH)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class ClipTextTower(nn.Module):
    """An open_clip model's text tower (the model minus its image tower) and its tokenizer."""

    kind = "open_clip"

    def __init__(self, arch: str, config: dict | None = None, model: nn.Module | None = None):
        import open_clip

        super().__init__()
        config = config or open_clip.get_model_config(arch)
        if model is None:  # rebuilt from the saved config: an architecture registered elsewhere loads here too
            model = open_clip.CLIP(**config) if "custom_text" not in config else open_clip.CustomTextCLIP(**config)
        model.visual = None  # the image tower is the backbone's; only the text side is kept here
        self.model = model
        self.settings = {"arch": arch, "config": config}
        tok = open_clip.get_tokenizer(arch)
        self.tokenize = lambda texts: tok([t if isinstance(t, str) else "" for t in texts])
        self.logit_scale = model.logit_scale
        self.phrases: list[str] = []

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if self.model.text_projection is not None \
            else int(self.model.token_embedding.weight.shape[1])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        self.eval()
        out = [self.model.encode_text(self.tokenize(texts[i:i + BATCH]), normalize=True)
               for i in range(0, len(texts), BATCH)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)


TextTower = LearnedTextTower | ClipTextTower


def save_text_tower(tower: TextTower, folder: str | Path, caption_column: str | None = None) -> Path:
    path = Path(folder) / TEXT_TOWER
    payload = {"kind": tower.kind, "settings": tower.settings, "state_dict": tower.state_dict(),
               "phrases": list(tower.phrases), "caption_column": caption_column}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_text_tower(folder: str | Path) -> TextTower | None:
    """The tower saved beside a model (its run folder or its checkpoint file's folder), or None."""
    folder = Path(folder)
    path = (folder if folder.is_dir() else folder.parent) / TEXT_TOWER
    if not path.is_file():
        return None
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: said in one line
        raise MhtagError(f"{path}: not a text tower mhtag can read ({str(exc).splitlines()[0][:200]})") from exc
    tower: TextTower = LearnedTextTower(**payload["settings"]) if payload["kind"] == "learned" \
        else ClipTextTower(**payload["settings"])
    tower.load_state_dict(payload["state_dict"])
    tower.phrases = list(payload.get("phrases", []))
    return tower.eval()
