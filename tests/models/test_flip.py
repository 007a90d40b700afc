"""The test-time horizontal flip (the embedding is the mean of the image's and its mirror's), a backbone option
saved with the model; and a fine-tune stopped mid-way resumes to the uninterrupted result."""

import logging

import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from mhtag.core.config import config_from_dict
from mhtag.inference.encoder import load_encoder
from mhtag.models.backbones import create_backbone
from mhtag.models.checkpoint import load_checkpoint
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit, resumed_config


def test_the_flip_averages_image_and_mirror_in_eval_mode_only():
    plain_backbone = create_backbone("tiny_cnn")
    x = torch.randn(3, 3, 32, 32)
    plain = plain_backbone.eval()(x)
    backbone = create_backbone("tiny_cnn", tta_flip=True).eval()
    with pytest.raises(AttributeError):
        backbone.data_config = {}  # the preprocessing is read-only once built
    with torch.no_grad():
        expected = (backbone.body(x) + backbone.body(x.flip(-1))) / 2
        assert torch.allclose(backbone(x), expected, atol=1e-6)
        assert not torch.allclose(backbone(x), plain, atol=1e-4)
        assert torch.equal(backbone.train()(x), backbone.body(x))  # training sees the image as it is


def test_a_run_with_the_flip_embeds_an_image_and_its_mirror_alike(demo, tiny_cfg, tmp_path):
    fit(config_from_dict({"tta_flip": True}, tiny_cfg), demo, out=tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["backbone_options"]["tta_flip"] is True
    image = Image.open(_first_image(demo)).convert("RGB")
    image.paste((255, 0, 0), (0, 0, 8, 32))  # a bar on the left: the mirror differs
    feats, probs = load_encoder(tmp_path / "run").encode_images([image, ImageOps.mirror(image)])
    assert torch.allclose(torch.from_numpy(feats[0]), torch.from_numpy(feats[1]), atol=1e-5)
    for p in probs.values():
        assert torch.allclose(torch.from_numpy(p[0]), torch.from_numpy(p[1]), atol=1e-5)
    feats, _ = load_encoder(None, "tiny_cnn").encode_images([image, ImageOps.mirror(image)])
    assert not torch.allclose(torch.from_numpy(feats[0]), torch.from_numpy(feats[1]), atol=1e-3)


def _first_image(labels_csv):
    frame = pd.read_csv(labels_csv)
    return labels_csv.parent / frame["path"].iloc[0]


def test_the_flip_stays_off_when_a_head_changes_under_a_mirror(demo, tiny_cfg, tmp_path, caplog):
    labels = tmp_path / "labels.csv"
    pd.read_csv(demo).rename(columns={"size": "view"}).to_csv(labels, index=False)
    with caplog.at_level(logging.WARNING):
        fit(config_from_dict({"tta_flip": True}, tiny_cfg), labels, images=demo.parent, out=tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["backbone_options"]["tta_flip"] is False
    assert "tta_flip is off" in caplog.text


@pytest.fixture
def finetune_cfg(tiny_cfg):
    return config_from_dict({"mode": "finetune", "epochs": 2, "probe_epochs": 4, "probe_lr": 0.01, "lr": 0.01,
                             "keep": "finetune"}, tiny_cfg)


# 2: decoding processes that persist across epochs (slow: each of the three runs starts them, 6 s each here)
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_an_interrupted_fine_tune_resumes_to_the_uninterrupted_result(demo, finetune_cfg, tmp_path, monkeypatch,
                                                                      workers):
    from mhtag.training import fit as loop

    cfg = config_from_dict({"num_workers": workers}, finetune_cfg)
    clean = fit(cfg, demo, out=tmp_path / "clean")
    real, calls = loop.train_one_epoch, {"n": 0}

    def interrupt_second_fine_tune_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == cfg.probe_epochs + 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", interrupt_second_fine_tune_epoch)
    assert fit(cfg, demo, out=tmp_path / "cut").interrupted
    monkeypatch.setattr(loop, "train_one_epoch", real)
    resumed, _ = resumed_config(tmp_path / "cut", {})
    run = fit(resumed, demo, out=tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in run.history] == [0, 1]
    for a, b in zip(clean.history, run.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    a, b = (load_checkpoint(tmp_path / name, "last.pt")["model"] for name in ("clean", "cut"))
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), atol=1e-5), key


def test_evaluate_can_switch_the_saved_flip_for_an_ablation(demo, tiny_cfg, tmp_path):
    fit(tiny_cfg, demo, out=tmp_path / "run")
    ece = {flip: {h: m["ece_uncalibrated"] for h, m in evaluate(tmp_path / "run", demo, split="val",
                                                                   tta_flip=flip)["heads"].items()}
           for flip in (None, False, True)}
    assert ece[None] == ece[False]  # None keeps what the run saved: no flip
    assert ece[True] != ece[False]  # the flipped embeddings give other probabilities
    assert load_checkpoint(tmp_path / "run")["backbone_options"]["tta_flip"] is False  # the run is untouched
