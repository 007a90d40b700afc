"""LP-FT: a fine-tune trains the probe first (backbone untouched), starts from its heads, and never silently ships a
model that is worse than the probe on validation."""

import json

import pytest
import torch
from conftest import TESTS
from typer.testing import CliRunner

from mhtag.core.config import config_from_dict
from mhtag.models.backbones import create_backbone
from mhtag.models.checkpoint import load_checkpoint
from mhtag.training.fit import fit, resumed_config


@pytest.fixture
def finetune_cfg(tiny_cfg):
    return config_from_dict({"mode": "finetune", "epochs": 1, "probe_epochs": 10, "probe_lr": 0.01}, tiny_cfg)


def _heads(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if k.startswith("heads.")}


def test_phase_one_trains_heads_on_a_bit_identical_backbone_and_phase_two_starts_from_them(demo, finetune_cfg,
                                                                                          tmp_path):
    cfg = config_from_dict({"lr": 1e-9, "keep": "finetune"}, finetune_cfg)  # phase two barely moves the heads
    run = fit(cfg, demo, out=tmp_path / "run")
    probe = load_checkpoint(tmp_path / "run" / "probe")
    pretrained = create_backbone("tiny_cnn", pretrained=True).state_dict()
    for key, value in pretrained.items():
        assert torch.equal(probe["model"][f"backbone.{key}"], value), key
    assert json.loads((tmp_path / "run" / "probe" / "metrics.json").read_text())["mode"] == "probe"
    tuned = load_checkpoint(tmp_path / "run")
    assert run.kept == "finetune" and tuned["mode"] == "finetune"
    for key, value in _heads(probe).items():
        assert torch.allclose(tuned["model"][key], value, atol=1e-5), key

    plain = fit(config_from_dict({"lp_ft": False}, cfg), demo, out=tmp_path / "plain")  # random heads instead
    assert plain.kept == "finetune"
    start = _heads(load_checkpoint(tmp_path / "plain"))
    assert not all(torch.allclose(start[k], v, atol=1e-3) for k, v in _heads(probe).items())


def test_a_fine_tune_worse_than_the_probe_is_reported_per_head_and_best_of_keeps_the_probe(demo, finetune_cfg,
                                                                                          tmp_path):
    from mhtag.cli.app import app

    args = ["train", "--labels", str(demo), "--multilabel", "marks", "--backbone", "tiny_cnn", "--mode", "finetune",
            "--set", "epochs=1", "--set", "probe_epochs=20", "--set", "probe_lr=0.01", "--set", "lr=1e-9",
            "--set", "lp_ft=false", "--set", "num_workers=0", "--set", "report=false"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "best-of")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("fine-tune below the probe on ")]
    assert len(lines) >= 3 and "val macro-F1" in lines[0]
    assert "kept the probe" in result.output
    assert load_checkpoint(tmp_path / "best-of")["mode"] == "probe"
    metrics = json.loads((tmp_path / "best-of" / "metrics.json").read_text())
    assert metrics["kept"] == "probe" and metrics["probe_score"] > max(e["score"] for e in metrics["epochs"])

    result = CliRunner().invoke(app, [*args, "--set", "keep=finetune", "--out", str(tmp_path / "kept")])
    assert result.exit_code == 0, result.output
    assert "fine-tune below the probe on " in result.output and "kept the fine-tune (keep=finetune)" in result.output
    assert load_checkpoint(tmp_path / "kept")["mode"] == "finetune"


def test_patience_stops_when_validation_stops_improving(demo, finetune_cfg, tmp_path):
    cfg = config_from_dict({"epochs": 6, "lr": 1e-9, "patience": 1, "keep": "finetune"}, finetune_cfg)
    run = fit(cfg, demo, out=tmp_path / "run")
    assert len(run.history) < 6
    assert run.history[-1]["epoch"] - run.best["epoch"] == 1  # stopped at the first epoch that did not improve
    assert all(h["score"] < run.history[-2]["score"] for h in run.history[:-2])  # the best was the epoch before


def test_a_fine_tune_stopped_in_its_probe_phase_resumes_to_the_uninterrupted_result(demo, finetune_cfg, tmp_path,
                                                                                    monkeypatch):
    from mhtag.training import fit as loop

    clean = fit(finetune_cfg, demo, out=tmp_path / "clean")
    real, calls = loop.train_one_epoch, {"n": 0}

    def interrupt_fifth(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # the probe's fifth epoch
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", interrupt_fifth)
    cut = fit(finetune_cfg, demo, out=tmp_path / "cut")
    assert cut.interrupted and not (tmp_path / "cut" / "best.pt").exists()
    monkeypatch.setattr(loop, "train_one_epoch", real)
    resumed, _ = resumed_config(tmp_path / "cut", {})
    run = fit(resumed, demo, out=tmp_path / "cut", resume=True)
    assert not run.interrupted and run.kept == clean.kept
    assert run.history[-1]["score"] == pytest.approx(clean.history[-1]["score"], abs=1e-6)
    assert run.history[-1]["val_loss"] == pytest.approx(clean.history[-1]["val_loss"], rel=1e-5)


@pytest.mark.slow  # decoding processes start once per run: seconds each on 2 cores
def test_a_fine_tune_gives_the_same_model_whatever_the_number_of_decoding_processes(demo, finetune_cfg, tmp_path):
    """Augmentation is drawn per (seed, epoch, image), so persistent decoding processes change nothing."""
    cfg = config_from_dict({"epochs": 2, "keep": "finetune"}, finetune_cfg)
    runs = {n: fit(config_from_dict({"num_workers": n}, cfg), demo, out=tmp_path / str(n)) for n in (0, 2)}
    states = {n: load_checkpoint(tmp_path / str(n))["model"] for n in runs}
    assert len(runs[2].history) == 2 and all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    other_seed = fit(config_from_dict({"seed": 1}, cfg), demo, out=tmp_path / "seed1")
    assert other_seed.history[-1]["train_loss"] != runs[0].history[-1]["train_loss"]


TORCHRUN_TRAIN = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers tiny_cnn
from mhtag.core.config import load_config
from mhtag.training.fit import fit
cfg = load_config(overrides={{"backbone": "tiny_cnn", "multilabel": ["marks"], "mode": "finetune", "epochs": 2,
                             "probe_epochs": 5, "batch_size": 16, "num_workers": 0, "report": False}})
run = fit(cfg, {labels!r}, out={out!r})
import os
os.write(1, f"KEPT {{run.kept}} {{len(run.comparison)}}\\n".encode())  # one write: ranks' lines never interleave
"""


@pytest.mark.slow  # three processes that each import torch
def test_lp_ft_under_torchrun_trains_the_probe_once_then_every_rank_fine_tunes(demo, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_TRAIN.format(tests=str(TESTS), labels=str(demo),
                                            out=str(tmp_path / "run")))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    kept = [line for line in out.stdout.splitlines() if line.startswith("KEPT")]
    assert len(kept) == 2 and kept[0] == kept[1]  # every rank returns the same run
    assert kept[0] in ("KEPT finetune 5", "KEPT probe 5")
    assert load_checkpoint(tmp_path / "run" / "probe")["mode"] == "probe"
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]) == 2
