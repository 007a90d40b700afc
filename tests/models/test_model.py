import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mhtag.core.config import TrainConfig, load_config
from mhtag.core.errors import MhtagError
from mhtag.data.schema import MISSING, LabelSchema
from mhtag.models.backbones import create_backbone
from mhtag.models.loss import MultiHeadLoss, class_weights, pos_weights
from mhtag.models.tagger import Tagger
from mhtag.training.optim import full_optimizer


@pytest.fixture
def schema():
    frame = pd.DataFrame({"colour": ["red"] * 6 + ["blue"] * 2, "tags": ["a|b", "a", "", "b", "a", "", "", "a"]})
    return LabelSchema.fit(frame, ["colour", "tags"], {"tags"})[0]


def test_one_head_per_attribute_with_the_right_shapes(schema):
    model = Tagger(create_backbone("tiny_cnn"), schema).eval()
    out = model(torch.zeros(3, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"colour": (3, 2), "tags": (3, 2)}
    with torch.no_grad():  # a tag group can say yes to several tags at once; a single-label head cannot
        for head in (model.heads["colour"][1], model.heads["tags"][1]):
            head.weight.zero_()
            head.bias.fill_(3.0)
    probs = model.probabilities(model(torch.zeros(3, 3, 32, 32)))
    assert (probs["tags"] > 0.9).all() and torch.allclose(probs["colour"], torch.full((3, 2), 0.5))


def test_linear_heads_run_as_one_matmul_with_each_heads_own_answer(schema):
    model = Tagger(create_backbone("tiny_cnn"), schema).eval()
    features = torch.randn(5, model.num_features)
    fused = model.forward_heads(features)
    f = model.feature_norm(features)
    for name, head in model.heads.items():
        assert torch.allclose(fused[name], head(f), atol=1e-6)


def test_class_weights_are_inverse_frequency_capped():
    w = class_weights([6, 2], "inverse", cap=10)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert (w * torch.tensor([6.0, 2.0])).sum() / 8 == pytest.approx(1.0)  # mean weight over rows is 1
    assert class_weights([1000, 1], "inverse", cap=5).max() == pytest.approx(5.0)
    assert class_weights([6, 2], "none", 10) is None
    assert torch.allclose(pos_weights([2, 8], 10, "inverse", 100), torch.tensor([4.0, 0.25]))


def test_total_loss_is_the_weighted_sum_of_head_losses(schema):
    loss_fn = MultiHeadLoss(schema, head_weights={"colour": 2.0}, weighting="inverse", n_train=8,
                            tag_weighting="inverse")
    logits = {"colour": torch.randn(4, 2), "tags": torch.randn(4, 2)}
    y = {"colour": torch.tensor([0, 1, MISSING, 1]), "tags": torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])}
    total, per_head = loss_fn(logits, y)
    keep = torch.tensor([0, 1, 3])  # the blank label is left out
    w = class_weights(schema["colour"].counts, "inverse", 10)
    expect_c = F.cross_entropy(logits["colour"][keep], y["colour"][keep], weight=w)
    expect_t = F.binary_cross_entropy_with_logits(logits["tags"], y["tags"],
                                                  pos_weight=pos_weights(schema["tags"].counts, 8, "inverse", 10))
    assert per_head["colour"].item() == pytest.approx(expect_c.item())
    assert per_head["tags"].item() == pytest.approx(expect_t.item())
    assert total.item() == pytest.approx(2 * expect_c.item() + expect_t.item())


def test_tag_groups_take_their_own_weighting(schema):
    loss_fn = MultiHeadLoss(schema, weighting="none", n_train=8, tag_weighting="sqrt")
    assert loss_fn.w_colour.numel() == 0  # single-label: plain cross-entropy
    assert torch.equal(loss_fn.w_tags, pos_weights(schema["tags"].counts, 8, "sqrt", 10))
    assert not torch.equal(loss_fn.w_tags, torch.ones_like(loss_fn.w_tags))


def test_unknown_head_weight_is_refused(schema):
    with pytest.raises(MhtagError, match="unknown attribute"):
        MultiHeadLoss(schema, head_weights={"colour_typo": 1.0})


def test_a_config_of_a_removed_option_reads_back_only_where_it_was_off():
    from mhtag.core.config import saved_config

    assert saved_config({"ema": None, "label_smoothing": 0.0, "head": "linear", "head_hidden": 512}) == TrainConfig()
    with pytest.raises(MhtagError, match="label_smoothing=0.1, an option this version of mhtag no longer has"):
        saved_config({"label_smoothing": 0.1})
    with pytest.raises(MhtagError, match="unknown config key 'ema'"):
        load_config(overrides={"ema": 0.99})


def test_finetune_overfits_four_images(schema):
    torch.manual_seed(0)
    model = Tagger(create_backbone("tiny_cnn"), schema, dropout=0.0)
    x = torch.rand(4, 3, 32, 32)
    y = {"colour": torch.tensor([0, 1, 0, 1]), "tags": torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])}
    loss_fn = MultiHeadLoss(schema, weighting="none", tag_weighting="none")
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        loss, _ = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model(x)
    assert out["colour"].argmax(1).tolist() == [0, 1, 0, 1]
    assert np.array_equal((out["tags"] > 0).float().numpy(), y["tags"].numpy())


def test_feature_dropout_drops_its_share_scales_the_rest_and_follows_torch_seeds():
    from mhtag.models.tagger import FeatureDropout

    drop, x = FeatureDropout(0.1), torch.ones(512, 1280)
    torch.manual_seed(0)
    a = drop(x)
    assert abs((a == 0).float().mean().item() - 0.1) < 0.005
    assert torch.allclose(a[a != 0], torch.full_like(a[a != 0], 1 / 0.9))
    torch.manual_seed(0)
    assert torch.equal(drop(x), a)  # the mask follows torch's generator: seeded runs and resumes repeat it
    assert not torch.equal(drop(x), a)
    drop.eval()
    assert torch.equal(drop(x), x)
    y = torch.randn(4, 8, requires_grad=True)
    drop.train()
    (drop(y) * 2).sum().backward()
    kept = y.grad != 0
    assert torch.allclose(y.grad[kept], torch.full_like(y.grad[kept], 2 / 0.9))  # gradients flow through kept ones


def test_layer_decay_gives_each_lower_backbone_layer_a_smaller_learning_rate(schema):
    cfg = TrainConfig(lr=1e-3, backbone_lr_mult=0.5, layer_decay=0.5)
    model = Tagger(create_backbone("efficientnet_lite0", pretrained=False), schema)  # timm: layer groups known
    groups = full_optimizer(model, cfg).param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    body = model.backbone.body
    assert lr_of[id(body.conv_head.weight)] == pytest.approx(5e-4)  # the top layer: backbone_lr_mult x lr
    assert lr_of[id(body.blocks[3][0].conv_pw.weight)] < lr_of[id(body.blocks[5][0].conv_pw.weight)]
    assert lr_of[id(body.conv_stem.weight)] == pytest.approx(5e-4 * 0.5 ** 16)  # 17 layers: stem, 15 blocks, head
    assert all(lr_of[id(p)] == 1e-3 for p in model.heads.parameters())
    assert len(lr_of) == sum(1 for _ in model.parameters())  # every parameter trains, once
    with pytest.raises(MhtagError, match="layer_decay needs a timm backbone"):
        full_optimizer(Tagger(create_backbone("tiny_cnn"), schema), cfg)
