"""A global colour histogram of the input image, appended to a backbone's pooled features.

ImageNet backbones are trained with colour jitter, so their features are partly blind to the exact colour that a
colour attribute asks for (Navy Blue vs Blue, Grey vs Charcoal); a short fine-tune only partly relearns it. The
histogram hands the heads the image's colours directly, at the cost of `bins**3` more feature dimensions."""

from __future__ import annotations

from typing import Any

import torch


def colour_histogram(x: torch.Tensor, data_config: dict[str, Any], bins: int) -> torch.Tensor:
    """(B, bins**3) square roots of each image's share of pixels per RGB cell (so each row has unit L2 norm and
    a linear head compares histograms by their Hellinger distance). `x` is the input normalised by `data_config`."""
    mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    rgb = (x.float() * std + mean).clamp(0, 1)
    cell = (rgb * bins).long().clamp_(max=bins - 1)
    index = ((cell[:, 0] * bins + cell[:, 1]) * bins + cell[:, 2]).flatten(1)
    counts = torch.zeros(len(x), bins**3, device=x.device).scatter_add_(1, index, torch.ones_like(index,
                                                                                                 dtype=torch.float32))
    return (counts / index.shape[1]).sqrt()
