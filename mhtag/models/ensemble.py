"""An ensemble of trained taggers that is itself a Tagger: every member sees the image, the answer is the mean of
the members' calibrated probabilities, recalibrated as one model. Predict, index, fusion, eval and audit take it
wherever they take a run, because it keeps the Tagger contract (`forward_features` -> one embedding,
`forward_heads` -> per-head logits, `probabilities`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mhtag.core.errors import MhtagError
from mhtag.models.backbones import Backbone
from mhtag.models.tagger import Tagger

_EPS = 1e-7


class EnsembleBackbone(Backbone):
    """The members' pooled features side by side, each divided by its typical norm so that no member outweighs
    the others in the embedding that the index searches (the heads undo the scaling exactly)."""

    def __init__(self, members: list[Backbone], scales: list[float]):
        name = "ensemble(" + "+".join(m.name for m in members) + ")"
        super().__init__(nn.ModuleList(members), sum(m.num_features for m in members), members[0].data_config, name)
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float32))  # a buffer: in embedding cache keys

    @property
    def num_features(self) -> int:
        return sum(self.widths)

    @property
    def scales(self) -> list[float]:
        return self.scale.tolist()

    @property
    def options(self) -> dict:
        """The members' own (their checkpoints keep them): what makes their features, beside their weights."""
        return {"members": [m.options for m in self.body]}

    @property
    def widths(self) -> list[int]:
        return [m.num_features for m in self.body]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x).float() * s for m, s in zip(self.body, self.scale, strict=True)], dim=1)


def check_members(members: list[Tagger], names: list[str]) -> None:
    """Members must answer the same questions (schema) from the same input (preprocessing)."""
    if len(members) < 2:
        raise MhtagError("an ensemble needs two or more runs")
    for m, name in zip(members, names, strict=True):
        if isinstance(m, TaggerEnsemble):
            raise MhtagError(f"{name}: is an ensemble already; list its runs instead")
    first, name0 = members[0], names[0]
    for m, name in zip(members[1:], names[1:], strict=True):
        if m.schema.to_dict() != first.schema.to_dict():
            raise MhtagError(f"{name}: its heads or classes differ from {name0}'s; members must share the schema")
        mine = m.backbone.data_config | {"tta_flip": m.backbone.tta_flip}
        theirs = first.backbone.data_config | {"tta_flip": first.backbone.tta_flip}
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if keys:
            fix = ("; --tta-flip or --no-tta-flip sets it for all members" if keys == ["tta_flip"]
                   else "; members must share input size and normalisation")
            raise MhtagError(f"{name}: its preprocessing differs from {name0}'s in {', '.join(keys)} "
                             f"({mine.get(keys[0])!r} vs {theirs.get(keys[0])!r})" + fix)


class TaggerEnsemble(Tagger):
    """`forward_heads` returns, per head, log of the members' mean calibrated probability (logit of it for a tag
    group), so Tagger's temperature and Platt scaling apply to the ensemble as to any model."""

    def __init__(self, members: list[Tagger], scales: list[float]):
        nn.Module.__init__(self)  # no heads of its own: the members' are the model
        check_members(members, [f"member {i}" for i in range(len(members))])
        self.members = nn.ModuleList(members)
        self.backbone = EnsembleBackbone([m.backbone for m in members], scales)
        self.schema = members[0].schema
        self.num_features = self.backbone.num_features
        self.temperatures_: dict[str, float] = {}
        self.platt_: dict[str, tuple[list[float], list[float]]] = {}
        self.thresholds_ = {a.name: [0.5] * a.num_outputs for a in self.schema.attributes if a.multi}

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = features.float().split(self.backbone.widths, dim=1)
        mean: dict[str, torch.Tensor] = {}
        for member, part, scale in zip(self.members, parts, self.backbone.scale, strict=True):
            for name, p in member.probabilities(member.forward_heads(part / scale)).items():
                mean[name] = mean[name] + p if name in mean else p
        out = {}
        for a in self.schema.attributes:
            p = (mean[a.name] / len(self.members)).clamp(_EPS, 1 - _EPS)
            out[a.name] = torch.logit(p) if a.multi else p.log()
        return out


def feature_scales(features: list[np.ndarray]) -> list[float]:
    """1 / the mean L2 norm of each member's features (on rows such as the validation split)."""
    return [float(1.0 / max(np.linalg.norm(f, axis=1).mean(), 1e-12)) for f in features]
