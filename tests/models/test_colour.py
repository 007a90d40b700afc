"""The colour histogram that `colour_histogram: N` appends to a backbone's features."""

import pytest
import torch
from torch import nn

from mhtag.core.config import load_config
from mhtag.core.errors import MhtagError
from mhtag.models.backbones import _BACKBONES, Backbone, register_backbone
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.models.colour import colour_histogram
from mhtag.models.ensemble import EnsembleBackbone
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit

CONFIG = {"input_size": [8, 8], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


class _Blind(nn.Module):
    """Features that say nothing about the image: only a histogram can tell its colours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), 8)


if "blind" not in _BACKBONES:
    @register_backbone
    def blind(pretrained: bool = True, checkpoint: str | None = None) -> Backbone:
        return Backbone(_Blind(), 8, {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
                                      "interpolation": "bilinear"}, "blind")


def _normalised(rgb: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(CONFIG[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (rgb - mean) / std


def test_each_pixel_counts_in_its_rgb_cell_and_rows_have_unit_norm():
    rgb = torch.zeros(2, 3, 8, 8)
    rgb[0, 0, :, :4] = 1.0  # left half pure red, right half black
    rgb[1] = torch.tensor([0.3, 0.6, 0.9]).view(3, 1, 1)  # one colour all over: cell (1, 2, 3) of 4 per channel
    h = colour_histogram(_normalised(rgb), CONFIG, bins=4)
    assert h.shape == (2, 64)
    red, black, one = (3 * 4 + 0) * 4 + 0, 0, (1 * 4 + 2) * 4 + 3
    assert h[0, red].item() == pytest.approx(0.5 ** 0.5) and h[0, black].item() == pytest.approx(0.5 ** 0.5)
    assert h[1, one].item() == pytest.approx(1.0)
    assert torch.allclose(h.pow(2).sum(1), torch.ones(2))


def test_a_backbone_widens_by_the_histogram_and_an_ensemble_by_its_members():
    members = [Backbone(_Blind(), 8, dict(CONFIG), "blind", colour_bins=4) for _ in range(2)]
    assert members[0].num_features == 8 + 64
    assert members[0](_normalised(torch.rand(3, 3, 8, 8))).shape == (3, 72)
    ensemble = EnsembleBackbone(members, [1.0, 1.0])
    assert ensemble.num_features == 144 and ensemble(torch.zeros(3, 3, 8, 8)).shape == (3, 144)


@pytest.mark.parametrize("bins", [-1, 17])
def test_the_bin_count_is_checked(bins):
    with pytest.raises(MhtagError, match="colour_histogram"):
        load_config(overrides={"colour_histogram": bins})


def _colour_accuracy(demo, tmp_path, bins):
    cfg = load_config(overrides={"backbone": "blind", "colour_histogram": bins, "probe_epochs": 60, "mode": "probe",
                                 "num_workers": 0, "report": False, "multilabel": ["marks"]})
    run = fit(cfg, demo, out=tmp_path / f"bins{bins}").dir
    return run, evaluate(run, demo, split="val")["heads"]["colour"]["accuracy"]


def test_a_backbone_blind_to_colour_learns_it_through_the_histogram_which_travels_with_the_checkpoint(demo, tmp_path):
    _, without = _colour_accuracy(demo, tmp_path, 0)
    run, with_histogram = _colour_accuracy(demo, tmp_path, 4)
    assert without <= 0.5 < 0.75 <= with_histogram  # four colours: without it the head can only guess (0.25)
    model = tagger_from_checkpoint(load_checkpoint(run))
    assert model.backbone.colour_bins == 4 and model.num_features == 8 + 64
    legacy = load_checkpoint(run)  # written before the options had their own key: they sat in the preprocessing
    legacy["data_config"] = {**legacy.pop("backbone_options"), **legacy["data_config"]}
    assert tagger_from_checkpoint(legacy).backbone.options == {"tta_flip": False, "colour_bins": 4}
