import json

import numpy as np
import pytest
import torch

from mhtag.core.config import config_from_dict, load_config
from mhtag.core.errors import MhtagError
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.training.evaluate import evaluate
from mhtag.training.fit import fit, resumed_config


def test_probe_run_writes_checkpoint_metrics_and_report(demo, tiny_cfg, tmp_path):
    run = fit(config_from_dict({"probe_epochs": 40, "probe_lr": 0.01, "report": True}, tiny_cfg), demo,
              out=tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"best.pt", "last.pt", "metrics.json", "report.html", "config.json", "schema.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 40
    heads = metrics["epochs"][-1]["heads"]
    assert set(heads) == {"shape", "colour", "size", "background", "marks"}
    assert heads["marks"]["kind"] == "multi" and len(heads["marks"]["thresholds"]) == 3
    assert heads["colour"]["kind"] == "single" and heads["background"]["accuracy"] >= 0.9  # chance: 0.5
    assert run.best["score"] == max(e["score"] for e in metrics["epochs"])
    assert (tmp_path / "run" / "confusion" / "colour.png").stat().st_size > 1000
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("reliability diagram of") == 5 and "(ECE " not in page  # the ECE is drawn in the PNG
    for head in heads:
        assert (tmp_path / "run" / "reliability" / f"{head}.png").stat().st_size > 1000
    state = load_checkpoint(tmp_path / "run")
    assert set(state["ece_before_calibration"]) == set(heads)  # tag groups too


def test_the_probe_standardises_features_with_training_statistics(demo, tiny_cfg, tmp_path):
    """The probe's feature norm is a fixed standard scaler (training rows' mean and variance), not trained."""
    from mhtag.data.labels import FILE, drop_unreadable, read_labels
    from mhtag.inference.encoder import stored_features

    run = fit(config_from_dict({"probe_epochs": 3}, tiny_cfg), demo, out=tmp_path / "run")
    norm = run.model.feature_norm
    frame = drop_unreadable(read_labels(demo)).frame
    train = frame[frame["split"] == "train"][FILE].tolist()
    x = torch.from_numpy(stored_features(run.model.backbone, train))
    assert torch.allclose(norm.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, x.var(0), rtol=1e-4, atol=1e-6)
    assert (norm.weight == 1).all() and (norm.bias == 0).all()


def test_checkpoint_round_trip_gives_identical_outputs(demo, tiny_cfg, tmp_path):
    run = fit(tiny_cfg, demo, out=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert state["schema"]["version"] == run.model.schema.version and state["backbone"] == "tiny_cnn"
    assert state["config"]["multilabel"] == ["marks"] and state["data_config"]["input_size"] == [32, 32]
    again = tagger_from_checkpoint(state)
    x = torch.rand(2, 3, 32, 32)
    run.model.eval()
    with torch.no_grad():
        a, b = run.model(x), again(x)
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert again.thresholds_ == run.model.thresholds_


def test_resume_applies_schedule_overrides_and_keeps_the_architecture(demo, tmp_path):
    cfg = load_config(overrides={"backbone": "tiny_cnn", "multilabel": ["marks"], "mode": "finetune", "epochs": 2,
                                 "probe_epochs": 5, "batch_size": 16, "num_workers": 0, "lr": 0.01})
    fit(cfg, demo, out=tmp_path / "run")
    with pytest.raises(MhtagError, match="--resume"):
        fit(cfg, demo, out=tmp_path / "run")
    with pytest.raises(MhtagError, match="keeps its saved backbone"):
        resumed_config(tmp_path / "run", {"backbone": "resnet18"})
    resumed, changes = resumed_config(tmp_path / "run", {"epochs": 3, "lr": 0.005, "multilabel": ["marks"]})
    assert changes == {"epochs": (2, 3), "lr": (0.01, 0.005)} and resumed.backbone == "tiny_cnn"
    run = fit(resumed, demo, out=tmp_path / "run", resume=True)
    assert [h["epoch"] for h in run.history] == [0, 1, 2]


def test_a_resumed_probe_gives_the_model_an_uninterrupted_run_gives(demo, tiny_cfg, tmp_path):
    """The backbone must come from the checkpoint (pretrained), not from an untrained build, before embedding."""
    clean = fit(tiny_cfg, demo, out=tmp_path / "clean")
    cut = config_from_dict({"max_minutes": 1e-6}, tiny_cfg)
    first = fit(cut, demo, out=tmp_path / "cut")
    assert len(first.history) == 1
    resumed, changes = resumed_config(tmp_path / "cut", {"max_minutes": None})
    assert changes == {"max_minutes": (1e-6, None)}
    run = fit(resumed, demo, out=tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in run.history] == [0, 1, 2, 3, 4]
    for a, b in zip(clean.history, run.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def test_same_seed_same_result(demo, tiny_cfg, tmp_path):
    a = fit(tiny_cfg, demo, out=tmp_path / "a").history[-1]["val_loss"]
    b = fit(tiny_cfg, demo, out=tmp_path / "b").history[-1]["val_loss"]
    assert a == pytest.approx(b, rel=1e-6)


def test_the_same_seed_gives_the_same_model_from_a_cold_or_a_warm_embedding_cache(demo, tiny_cfg, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("MHTAG_CACHE", str(tmp_path / "cache"))  # empty: the first run embeds, the second reads
    runs = [fit(tiny_cfg, demo, out=tmp_path / name) for name in ("cold", "warm")]
    heads = [run.model.heads.state_dict() for run in runs]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_nan_loss_fails_clearly_and_keeps_the_last_good_checkpoint(demo, tiny_cfg, tmp_path, monkeypatch):
    from mhtag.models.loss import MultiHeadLoss

    calls = {"n": 0}
    real = MultiHeadLoss.forward

    def poisoned(self, logits, targets):
        calls["n"] += 1
        total, per_head = real(self, logits, targets)
        if calls["n"] > 4:  # after two epochs (one batch each) and their validation
            per_head["colour"] = per_head["colour"] * float("nan")
            total = total * float("nan")
        return total, per_head

    monkeypatch.setattr(MultiHeadLoss, "forward", poisoned)
    with pytest.raises(MhtagError, match=r"loss became nan \(head\(s\): colour\); the best checkpoint so far is kept"):
        fit(tiny_cfg, demo, out=tmp_path / "run")
    tagger_from_checkpoint(load_checkpoint(tmp_path / "run"))  # still loads
    calls["n"] = -10**9  # poisoned from the first batch: nothing to keep, and the message says so
    monkeypatch.setattr(MultiHeadLoss, "forward", lambda self, lo, t: (real(self, lo, t)[0] * float("nan"),
                                                                      {"shape": torch.tensor(float("nan"))}))
    with pytest.raises(MhtagError, match="no checkpoint was saved"):
        fit(tiny_cfg, demo, out=tmp_path / "fresh")


def test_ctrl_c_keeps_the_last_good_checkpoint(demo, tiny_cfg, tmp_path, monkeypatch):
    from mhtag.training import fit as loop

    real, calls = loop.train_one_epoch, {"n": 0}

    def interrupt_third(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 3's training pass
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", interrupt_third)
    run = fit(tiny_cfg, demo, out=tmp_path / "run")
    assert run.interrupted and len(run.history) == 2
    assert load_checkpoint(tmp_path / "run", "last.pt")["epoch"] == 1


def test_eval_reports_per_head_metrics_and_unknown_labels(demo, tiny_cfg, tmp_path):
    fit(tiny_cfg, demo, out=tmp_path / "run")
    text = demo.read_text().splitlines()
    # relabel one test row with a colour never seen in training
    idx = next(i for i, line in enumerate(text) if line.endswith(",test"))
    parts = text[idx].split(",")
    parts[2] = "ultraviolet"
    text[idx] = ",".join(parts)
    edited = demo.parent / "edited.csv"
    edited.write_text("\n".join(text) + "\n")
    result = evaluate(tmp_path / "run", edited, split="test")
    assert result["unknown_labels"]["colour"] == 1
    n_test = sum(line.endswith(",test") for line in text)
    assert result["n"] == n_test and result["heads"]["colour"]["n"] == n_test - 1
    assert result["heads"]["marks"]["kind"] == "multi" and "mAP" in result["heads"]["marks"]
    assert np.isfinite(result["heads"]["shape"]["ece"])


def test_an_attribute_with_one_class_is_not_a_head(tmp_path, demo, tiny_cfg):
    lines = demo.read_text().splitlines()
    out = [lines[0] + ",constant"] + [line + ",same" for line in lines[1:]]
    csv = demo.parent / "const.csv"
    csv.write_text("\n".join(out) + "\n")
    run = fit(tiny_cfg, csv, out=tmp_path / "run")
    assert "constant" not in run.model.schema.names and "only 1 class" in run.dropped["constant"]
