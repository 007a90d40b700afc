"""Ensembles of trained runs: the mean of the members' calibrated answers, recalibrated, loaded like any run."""

import json

import numpy as np
import pytest
import torch
from conftest import invoke
from PIL import Image
from typer.testing import CliRunner

from mhtag import cli
from mhtag.core.errors import MhtagError
from mhtag.data.labels import FILE, read_labels
from mhtag.data.transforms import build_transform
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.store import open_table, read_columns
from mhtag.inference.encoder import load_encoder
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.models.ensemble import TaggerEnsemble
from mhtag.training.ensemble import build_ensemble
from mhtag.training.evaluate import evaluate, split_rows, tagger_probabilities
from mhtag.training.fit import fit

runner = CliRunner()


@pytest.fixture(scope="module")
def second_run(demo, tmp_path_factory):
    """Another tiny_cnn probe on the demo data, from a different seed."""
    from mhtag.core.config import load_config

    cfg = load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "probe_epochs": 5, "seed": 1,
                                 "num_workers": 0, "mode": "probe", "report": False})
    return fit(cfg, demo, out=tmp_path_factory.mktemp("run2") / "run").dir


@pytest.fixture(scope="module")
def ensemble_dir(demo, tiny_run, second_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "ens"
    build_ensemble([tiny_run, second_run], demo, out=out)
    return out


def _images(demo, n=6):
    files = read_labels(demo).frame[FILE].tolist()[:n]
    return [Image.open(f).convert("RGB") for f in files]


def test_the_ensemble_answers_the_recalibrated_mean_of_its_members(demo, tiny_run, second_run, ensemble_dir):
    ens = tagger_from_checkpoint(load_checkpoint(ensemble_dir))
    members = [tagger_from_checkpoint(load_checkpoint(r)) for r in (tiny_run, second_run)]
    assert isinstance(ens, TaggerEnsemble) and len(ens.members) == 2
    transform = build_transform(load_encoder(ensemble_dir).data_config)
    x = torch.stack([transform(im) for im in _images(demo)])
    with torch.no_grad():
        mean = {k: sum(m.probabilities(m(x))[k] for m in members) / 2 for k in ens.schema.names}
        uncalibrated = ens.probabilities(ens(x), calibrated=False)
        calibrated = ens.probabilities(ens(x))
    for a in ens.schema.attributes:
        assert torch.allclose(uncalibrated[a.name], mean[a.name], atol=1e-5), a.name
        if not a.multi:
            t = ens.temperatures_[a.name]
            expected = torch.softmax(mean[a.name].clamp_min(1e-7).log() / t, -1)
            assert torch.allclose(calibrated[a.name], expected, atol=1e-5), a.name
            assert (calibrated[a.name].argmax(1) == mean[a.name].argmax(1)).all()


def test_members_features_are_put_on_one_scale_and_the_embedding_spans_them_all(demo, ensemble_dir):
    enc = load_encoder(ensemble_dir)
    assert enc.dim == 64  # two tiny_cnn members, 32 features each
    feats = enc.module.forward_features(torch.zeros(2, 3, 32, 32) + torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 64)
    scales = load_checkpoint(ensemble_dir)["scales"]
    assert len(scales) == 2 and all(s > 0 for s in scales)


def test_build_reports_the_ensemble_beside_its_members_and_recalibration_lowers_val_nll(demo, tiny_run, second_run,
                                                                                     tmp_path):
    result = build_ensemble([tiny_run, second_run], demo, out=tmp_path / "ens")
    assert set(result["val"]) == {"ensemble", str(tiny_run), str(second_run)}
    assert result["val"]["ensemble"]["shape"]["n"] == result["val_rows"] > 0
    ens = tagger_from_checkpoint(load_checkpoint(tmp_path / "ens"))
    rows = split_rows(ens, load_checkpoint(tmp_path / "ens")["config"], demo, None, "val")
    calibrated, raw = tagger_probabilities(ens, rows.files)
    for name in ("shape", "colour", "size", "background"):  # fitted on these rows: never worse than before
        y = rows.targets[name]
        assert _nll(calibrated[name], y) <= _nll(raw[name], y) + 1e-6, name
    ev = evaluate(tmp_path / "ens", demo, split="val")
    assert ev["heads"]["shape"]["accuracy"] == result["val"]["ensemble"]["shape"]["accuracy"]


def _nll(probs, y):
    keep = y >= 0
    return float(-np.log(np.clip(probs[keep][np.arange(keep.sum()), y[keep]], 1e-12, 1)).mean())


def test_the_index_stores_the_ensembles_calibrated_answers(demo, ensemble_dir, tmp_path):
    report = index_images(demo.parent, tmp_path / "db", model=ensemble_dir, labels=demo,
                          options=IndexOptions(workers=0))
    assert report.added > 0
    rows = read_columns(open_table(tmp_path / "db"), ["vector", "probs_shape", "conf_shape"]).to_pylist()
    assert len(rows[0]["vector"]) == 64
    assert all(abs(max(r["probs_shape"]) - r["conf_shape"]) < 1e-6 for r in rows)


def test_members_must_share_schema_and_preprocessing(demo, tiny_run, tmp_path):
    from mhtag.core.config import load_config

    cfg = load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "probe_epochs": 2,
                                 "image_size": [24, 24], "num_workers": 0, "mode": "probe", "report": False})
    other = fit(cfg, demo, out=tmp_path / "small").dir
    with pytest.raises(MhtagError, match="input_size"):
        build_ensemble([tiny_run, other], demo, out=tmp_path / "ens")
    with pytest.raises(MhtagError, match="two or more"):
        build_ensemble([tiny_run], demo, out=tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_an_ensemble_never_overwrites_a_trained_run_nor_nests(demo, tiny_run, second_run, ensemble_dir, tmp_path):
    before = (tiny_run / "best.pt").read_bytes()
    with pytest.raises(MhtagError, match="holds a trained run"):
        build_ensemble([tiny_run, second_run], demo, out=tiny_run)
    assert (tiny_run / "best.pt").read_bytes() == before
    with pytest.raises(MhtagError, match="ensemble already"):
        build_ensemble([ensemble_dir, tiny_run], demo, out=tmp_path / "nested")
    build_ensemble([tiny_run, second_run], demo, out=ensemble_dir)  # rebuilding an ensemble in place is fine


def test_the_cli_builds_an_ensemble_and_predict_uses_it(demo, tiny_run, second_run, tmp_path):
    out = invoke("ensemble", tiny_run, second_run, "--labels", demo, "--out", tmp_path / "ens")
    assert "accuracy by head" in out and "ensemble" in out
    bad = runner.invoke(cli.app, ["ensemble", str(tiny_run), "--labels", str(demo), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "two or more" in str(bad.exception)
    img = read_labels(demo).frame[FILE].iloc[0]
    result = json.loads(invoke("predict", img, "--model", tmp_path / "ens", "--db", tmp_path / "nodb", "--json"))
    answers = result["predictions"][0]["attributes"]
    assert set(answers) == {"shape", "colour", "size", "background", "marks"}


def test_a_flip_ensemble_embeds_each_image_and_its_mirror_and_keeps_its_members_runs_as_they_were(
        demo, tiny_run, second_run, tmp_path):
    invoke("ensemble", tiny_run, second_run, "--labels", demo, "--out", tmp_path / "flip", "--tta-flip")
    ens = tagger_from_checkpoint(load_checkpoint(tmp_path / "flip"))
    plain = tagger_from_checkpoint(load_checkpoint(tiny_run))
    assert load_checkpoint(tmp_path / "flip")["config"]["tta_flip"] is True
    assert all(m.backbone.tta_flip for m in ens.members)
    assert load_checkpoint(tiny_run)["backbone_options"]["tta_flip"] is False  # the member's own run is untouched
    x = torch.stack([build_transform(plain.backbone.data_config)(im) for im in _images(demo)])
    with torch.no_grad():
        mirrored = (plain.backbone(x) + plain.backbone(x.flip(-1))) / 2
        assert torch.allclose(ens.members[0].backbone(x), mirrored, atol=1e-5)
        assert not torch.allclose(plain.backbone(x), mirrored, atol=1e-3)


def test_members_disagreeing_on_the_flip_are_told_how_to_agree_and_a_head_forbidding_it_refuses_it(
        demo, tiny_run, second_run, tmp_path):
    from mhtag.models.checkpoint import save_checkpoint, with_options

    state = load_checkpoint(tiny_run)
    state["config"] = {**state["config"], "aug_forbid": {"shape": ["hflip"]}}
    (tmp_path / "sided").mkdir()
    save_checkpoint(state, tmp_path / "sided" / "best.pt")
    second = load_checkpoint(second_run)
    flipped = with_options(second, tta_flip=True)
    (tmp_path / "flipped").mkdir()
    save_checkpoint(flipped, tmp_path / "flipped" / "best.pt")
    with pytest.raises(MhtagError, match="differs .* in tta_flip .*--tta-flip or --no-tta-flip"):
        build_ensemble([tiny_run, tmp_path / "flipped"], demo, out=tmp_path / "ens")
    with pytest.raises(MhtagError, match="sided.*forbids horizontal flips"):
        build_ensemble([tmp_path / "sided", second_run], demo, out=tmp_path / "ens", tta_flip=True)
    assert not (tmp_path / "ens").exists()
    build_ensemble([tmp_path / "sided", second_run], demo, out=tmp_path / "ens", tta_flip=False)  # off is fine
