"""Knowledge distillation: the loss learns soft targets, a student's targets mix its labels with a teacher's
calibrated probabilities, and a teacher must answer the student's questions."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import invoke

from mhtag.core.config import config_from_dict
from mhtag.core.errors import MhtagError
from mhtag.data.labels import FILE, read_labels
from mhtag.data.schema import MISSING, LabelSchema
from mhtag.inference.encoder import stored_features
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.models.loss import MultiHeadLoss, soft_key
from mhtag.models.tagger import feature_probabilities
from mhtag.training.distill import mix_targets, teacher_targets
from mhtag.training.fit import fit


@pytest.fixture
def schema():
    frame = pd.DataFrame({"colour": ["red", "blue", "green"] * 3, "tags": ["a|b", "a", "", "b", "a", "", "", "a", "b"]})
    return LabelSchema.fit(frame, ["colour", "tags"], {"tags"})[0]


def test_the_loss_learns_soft_targets_where_a_batch_has_them(schema):
    loss_fn = MultiHeadLoss(schema, n_train=9, tag_weighting="none")
    logits = {"colour": torch.randn(4, 3), "tags": torch.randn(4, 2)}
    y = {"colour": torch.tensor([0, 2, MISSING, 1]), "tags": torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])}
    soft = {soft_key("colour"): torch.softmax(torch.randn(4, 3), -1), soft_key("tags"): torch.rand(4, 2)}
    _, hard = loss_fn(logits, y)
    _, learned = loss_fn(logits, {**y, **soft})
    keep = torch.tensor([0, 1, 3])  # the row without a label stays out, soft target or not
    expect = -(soft[soft_key("colour")][keep] * torch.log_softmax(logits["colour"][keep], -1)).sum(-1).mean()
    assert learned["colour"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert learned["tags"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits["tags"], soft[soft_key("tags")]).item(), rel=1e-5)
    one_hot = {soft_key("colour"): F.one_hot(y["colour"].clamp(min=0), 3).float(), soft_key("tags"): y["tags"]}
    _, same = loss_fn(logits, {**y, **one_hot})  # one-hot soft targets are the labels
    assert all(same[k].item() == pytest.approx(hard[k].item(), rel=1e-5) for k in hard)


def test_targets_mix_the_labels_with_the_teachers_probabilities(schema):
    colour, tags = schema["colour"], schema["tags"]
    labels = np.array([0, 2, MISSING])
    teacher = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    mixed = mix_targets(colour, labels, teacher, 0.25)
    assert np.allclose(mixed[0], [0.875, 0.075, 0.05]) and np.allclose(mixed[1], [0.025, 0.025, 0.95])
    assert np.allclose(mixed[:2].sum(1), 1)
    assert np.allclose(mix_targets(colour, labels, teacher, 0.0)[:2], np.eye(3)[[0, 2]])
    assert np.allclose(mix_targets(colour, labels, teacher, 1.0), teacher[:3] * [[1], [1], [1]])
    assert np.allclose(mix_targets(tags, np.array([[1, 0]]), np.array([[0.6, 0.2]]), 0.5), [[0.8, 0.1]])


def _scrambled_training_labels(demo, tmp_path):
    """The demo's labels with every head's training rows shuffled (validation rows kept): the same vocabulary,
    wrong answers."""
    frame = pd.read_csv(demo)
    train = frame["split"] == "train"
    rng = np.random.default_rng(0)
    for column in ("shape", "colour", "size", "background", "marks"):
        frame.loc[train, column] = rng.permutation(frame.loc[train, column].to_numpy())
    path = tmp_path / "scrambled.csv"
    frame.to_csv(path, index=False)
    return path


def _agreement(run, teacher, demo) -> float:
    """Share of the demo's images where `run`'s colour answer is the teacher's."""
    files = read_labels(demo).frame[FILE].tolist()
    models = [tagger_from_checkpoint(load_checkpoint(r)).eval() for r in (run, teacher)]
    answers = [feature_probabilities(m, stored_features(m.backbone, files))["colour"]
               .argmax(1) for m in models]
    return float((answers[0] == answers[1]).mean())


def test_a_student_learns_its_teachers_answers(demo, tiny_run, tiny_cfg, tmp_path):
    scrambled = _scrambled_training_labels(demo, tmp_path)
    cfg = config_from_dict({"probe_epochs": 20, "seed": 3}, tiny_cfg)
    student_cfg = config_from_dict({"teacher": str(tiny_run), "distill": 1.0}, cfg)
    on_truth = fit(student_cfg, demo, out=tmp_path / "on_truth").dir
    on_noise = fit(student_cfg, scrambled, images=demo.parent, out=tmp_path / "on_noise").dir
    alone = fit(cfg, scrambled, images=demo.parent, out=tmp_path / "alone").dir
    heads = [tagger_from_checkpoint(load_checkpoint(r)).heads.state_dict() for r in (on_truth, on_noise, alone)]
    # with distill=1 the labels play no part: scrambling them changes nothing; without a teacher it does
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not all(torch.equal(heads[0][k], heads[2][k]) for k in heads[0])
    # and the teacher's answers are what the student learned from wrong labels
    assert _agreement(on_noise, tiny_run, demo) >= _agreement(alone, tiny_run, demo) + 0.25


def test_teacher_targets_are_the_teachers_calibrated_probabilities(demo, tiny_run):
    teacher = tagger_from_checkpoint(load_checkpoint(tiny_run)).eval()
    frame = read_labels(demo).frame
    files = frame[FILE].tolist()[:10]
    labels = teacher.schema.encode(frame.iloc[:10])[0]
    targets = teacher_targets(str(tiny_run), 1.0, teacher.schema, files, labels)
    probs = feature_probabilities(teacher, stored_features(teacher.backbone, files))
    assert set(targets) == {soft_key(name) for name in teacher.schema.names}
    for a in teacher.schema.attributes:
        assert np.allclose(targets[soft_key(a.name)], probs[a.name], atol=1e-6), a.name


def test_a_teacher_with_other_heads_is_refused(demo, tiny_run, tiny_cfg, tmp_path):
    cfg = config_from_dict({"teacher": str(tiny_run), "ignore": ["size"]}, tiny_cfg)
    with pytest.raises(MhtagError, match=r"teacher .*label vocabulary differs.*size"):
        fit(cfg, demo, out=tmp_path / "student")
    with pytest.raises(MhtagError, match="its own teacher"):
        fit(config_from_dict({"teacher": str(tiny_run)}, tiny_cfg), demo, out=tiny_run)
    with pytest.raises(MhtagError, match="no model checkpoint"):
        fit(config_from_dict({"teacher": str(tmp_path / "nowhere")}, tiny_cfg), demo, out=tmp_path / "student2")


def test_the_cli_trains_a_student_and_its_config_names_the_teacher(demo, tiny_run, tmp_path):
    out = tmp_path / "student"
    invoke("train", "--labels", demo, "--multilabel", "marks", "--backbone", "tiny_cnn", "--mode", "probe",
           "--probe-epochs", 3, "--set", f"teacher={tiny_run}", "--set", "distill=0.3", "--set", "report=false",
           "--out", out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["teacher"] == str(tiny_run) and saved["distill"] == 0.3
    assert tagger_from_checkpoint(load_checkpoint(out)).schema.version == \
        tagger_from_checkpoint(load_checkpoint(tiny_run)).schema.version
