import os

import pytest
import torch
from conftest import SHARED

from mhtag.core.errors import MhtagError
from mhtag.models.backbones import create_backbone, list_backbones, lite_classifier, register_backbone


def test_registry_round_trip_and_uniform_api():
    assert "tiny_cnn" in list_backbones() and "efficientnet_lite0" in list_backbones()
    bb = create_backbone("tiny_cnn")
    assert bb(torch.zeros(2, 3, 32, 32)).shape == (2, bb.num_features)
    assert set(bb.data_config) >= {"input_size", "mean", "std"}


def test_unknown_backbone_lists_choices():
    with pytest.raises(MhtagError, match="unknown backbone 'nope'.*efficientnet_lite0"):
        create_backbone("nope")


def test_registering_a_name_twice_fails():
    def tiny_cnn(pretrained=True, checkpoint=None):  # same name as the conftest one
        raise AssertionError

    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(tiny_cnn)


def test_timm_names_resolve_without_download():
    bb = create_backbone("resnet18", pretrained=False)
    assert bb.name == "timm/resnet18" and bb.num_features == 512
    assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_open_clip_without_weights_says_how_to_provide_them():
    with pytest.raises(MhtagError, match="needs weights.*checkpoint=PATH"):
        create_backbone("open_clip/ViT-B-32", pretrained=True)
    with pytest.raises(MhtagError, match="does not exist"):
        create_backbone("open_clip/ViT-B-32", checkpoint="/no/such/file.pt")


def test_lite0_backbone_has_the_packages_normalisation():
    bb = create_backbone("efficientnet_lite0").eval()
    assert bb.num_features == 1280
    assert bb.data_config["mean"][0] == pytest.approx(127 / 255)
    assert bb.data_config["std"][0] == pytest.approx(128 / 255)


SUNGLASSES = ("8631.jpg", {836, 837})  # 'sunglass' / 'sunglasses, dark glasses'
WATCH = ("4665.jpg", {531, 409, 826})  # 'digital watch' / 'analog clock' / 'stopwatch'


@pytest.mark.skipif(not SHARED.is_dir() and not os.environ.get("CI"), reason="needs ../shared/datasets/fashion12k "
                    "(CI has it, and fails without it)")
@pytest.mark.parametrize("variant,photo", [(0, SUNGLASSES), (0, WATCH), (1, WATCH), (2, SUNGLASSES)])
def test_lite_weight_mapping_classifies_real_photos(variant, photo):
    """Tensor-by-tensor mapping onto timm's tf_efficientnet_lite<N> gives a working ImageNet classifier."""
    import numpy as np
    from PIL import Image

    image, classes = photo
    model = lite_classifier(variant).eval()
    side = (224, 240, 260)[variant]
    img = Image.open(SHARED / "images" / image).convert("RGB").resize((side * 3 // 4, side))
    x = (torch.tensor(np.asarray(img)).permute(2, 0, 1).float()[None] - 127) / 128
    with torch.no_grad():
        top = model(x).softmax(-1)[0].topk(3).indices.tolist()
    assert top[0] in classes, top
    # the same logits as the backbone + the original classifier weights
    bb = create_backbone(f"efficientnet_lite{variant}").eval()
    with torch.no_grad():
        logits = torch.nn.functional.linear(bb(x), model.classifier.weight, model.classifier.bias)
    assert torch.allclose(logits, model(x), atol=1e-4)
