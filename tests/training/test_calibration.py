"""Temperature scaling: fitted on validation rows, stored with the model, applied wherever probabilities are."""

import numpy as np
import torch

from mhtag.index.store import open_table, read_columns
from mhtag.models.checkpoint import checkpoint_state, load_checkpoint, tagger_from_checkpoint
from mhtag.report.html import write_eval_report
from mhtag.training.calibration import apply_platt, apply_temperature, fit_platt, fit_temperature, platt_helps
from mhtag.training.evaluate import evaluate
from mhtag.training.metrics import calibrated_ece_band, expected_calibration_error, tag_calibration_error


def _nll(probs, y):
    return float(-np.log(probs[np.arange(len(y)), y]).mean())


def test_temperature_scaling_fixes_over_and_under_confident_heads():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 4000)
    true_logits = rng.normal(size=(4000, 5)) + 2.0 * np.eye(5)[y]  # a model right ~60% of the time
    for scale, direction in ((4.0, "over"), (0.25, "under")):
        z = scale * true_logits
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        t = fit_temperature(probs, y)
        calibrated = apply_temperature(probs, t)
        assert (t > 1) == (direction == "over"), (direction, t)
        assert _nll(calibrated, y) < _nll(probs, y)
        assert expected_calibration_error(calibrated, y) < expected_calibration_error(probs, y)
        assert (calibrated.argmax(1) == probs.argmax(1)).all()  # the ranking is kept


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _draw_labels(probs, rng):
    """One label per row drawn from that row's own distribution: the model is calibrated by construction."""
    return (rng.random(len(probs))[:, None] > np.cumsum(probs, 1)).sum(1).clip(0, probs.shape[1] - 1)


def test_a_calibrated_models_ece_falls_inside_its_band_and_an_overconfident_ones_above_it():
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(1200, 20)) * 2.0)  # confidences spread over many bins, like a colour head
    band = calibrated_ece_band(probs.max(1))
    honest = [expected_calibration_error(probs, _draw_labels(probs, rng)) for _ in range(40)]
    assert abs(np.mean(honest) - band["ece_floor"]) < 0.2 * band["ece_floor"]  # the band is what honesty scores
    assert np.mean(np.array(honest) > band["ece_floor_p95"]) <= 0.15
    assert band["ece_floor"] > 0.02  # on 1,200 rows even a perfect model is far from ECE 0
    sharp = _softmax(np.log(probs) * 3.0)  # same answers, over-confident
    y = _draw_labels(probs, rng)
    assert expected_calibration_error(sharp, y) > 3 * calibrated_ece_band(sharp.max(1))["ece_floor_p95"]


def test_the_band_narrows_with_rows_and_brackets_each_bins_confidence():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, 16000)
    small, large = calibrated_ece_band(conf[:1000]), calibrated_ece_band(conf)
    assert 0.18 < large["ece_floor"] / small["ece_floor"] < 0.35  # about 1 / sqrt(16)
    low, high = np.array(small["band_low"]), np.array(small["band_high"])
    assert len(low) == 11 and (low < high).all()  # the 11 bins from .3 up, each its 5-95% range
    centres = (np.arange(15) + 0.5) / 15
    assert (low <= centres[4:] + 0.04).all() and (high >= centres[4:] - 0.04).all()
    assert calibrated_ece_band(conf[:1000], seed=0) == small  # seeded: eval is reproducible


def test_the_fitted_temperatures_are_stored_and_used_by_the_index(indexed, tiny_run):
    db, _ = indexed
    state = load_checkpoint(tiny_run)
    temps = state["temperatures"]
    assert set(temps) == {"shape", "colour", "size", "background"} and all(t > 0 for t in temps.values())
    model = tagger_from_checkpoint(state)
    assert model.temperatures_ == temps
    logits = {"colour": torch.tensor([[2.0, 0.0, 0.0, -1.0]])}
    model.temperatures_ = {"colour": 2.0}
    p = model.probabilities({**{a.name: torch.zeros(1, a.num_outputs) for a in model.schema.attributes}, **logits})
    assert torch.allclose(p["colour"], torch.softmax(logits["colour"] / 2.0, -1))
    row = read_columns(open_table(db), ["probs_colour", "conf_colour"]).to_pylist()[0]
    assert abs(max(row["probs_colour"]) - row["conf_colour"]) < 1e-6  # stored conf is the calibrated top p


def _bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def _miscalibrated_tags(scale: float, n: int = 3000, seed: int = 0):
    """Tags whose true log-odds are z; a model reporting sigmoid(scale * z) is over- (scale > 1) or
    under-confident (scale < 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, 4)) + np.array([-1.0, 0.0, 0.5, 1.5])
    y = (rng.random((n, 4)) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return 1 / (1 + np.exp(-scale * z)), y


def test_platt_scaling_fixes_over_and_under_confident_tags_on_rows_it_was_not_fitted_on():
    for scale in (3.0, 0.3):
        probs, y = _miscalibrated_tags(scale)
        fit_rows, held_out = slice(0, 1500), slice(1500, None)
        a, b = fit_platt(probs[fit_rows], y[fit_rows])
        assert np.allclose(a, 1 / scale, rtol=0.15), (scale, a)  # it recovers the true slope
        calibrated = apply_platt(probs[held_out], a, b)
        assert _bce(calibrated, y[held_out]) < _bce(probs[held_out], y[held_out])
        assert tag_calibration_error(calibrated, y[held_out]) < tag_calibration_error(probs[held_out], y[held_out])
        order = np.argsort(probs[held_out], axis=0)
        assert (np.diff(np.take_along_axis(calibrated, order, axis=0), axis=0) >= 0).all()  # no pair reversed
        assert platt_helps(probs, y)


def test_platt_maps_thresholds_so_yes_no_answers_do_not_change():
    probs, _ = _miscalibrated_tags(3.0)
    a, b = np.array([0.4, 0.3, 0.5, 0.2]), np.array([0.1, -0.3, 0.0, 0.6])
    thresholds = np.array([0.3, 0.5, 0.65, 0.2])
    assert ((apply_platt(probs, a, b) >= apply_platt(thresholds, a, b)) == (probs >= thresholds)).all()


def test_a_tag_with_one_answer_keeps_the_identity():
    probs, y = _miscalibrated_tags(3.0, n=200)
    y[:, 2] = 0
    a, b = fit_platt(probs, y)
    assert a[2] == 1.0 and b[2] == 0.0 and a[0] != 1.0


def test_tag_calibration_error_is_zero_for_honest_forecasts():
    y = np.array([[1, 0]] * 8 + [[0, 1]] * 2, dtype=np.float32)  # tag 0 there 80% of the time, tag 1 20%
    probs = np.tile([0.8, 0.2], (10, 1))
    assert tag_calibration_error(probs, y) < 1e-9
    assert abs(tag_calibration_error(np.tile([0.9, 0.1], (10, 1)), y) - 0.1) < 1e-9


def test_tag_groups_scaling_is_stored_and_applied_by_the_model(tiny_run):
    model = tagger_from_checkpoint(load_checkpoint(tiny_run))
    model.platt_ = {"marks": ([0.5] * 3, [0.25, 0.0, -0.5])}
    logits = {a.name: torch.randn(5, a.num_outputs) for a in model.schema.attributes}
    p = model.probabilities(logits)
    expected = torch.sigmoid(0.5 * logits["marks"] + torch.tensor([0.25, 0.0, -0.5]))
    assert torch.allclose(p["marks"], expected)
    assert torch.allclose(model.probabilities(logits, calibrated=False)["marks"], torch.sigmoid(logits["marks"]))
    restored = tagger_from_checkpoint(checkpoint_state(model, load_checkpoint(tiny_run)["config"],
                                                       model.backbone.data_config))
    assert restored.platt_ == model.platt_
    assert torch.allclose(restored.probabilities(logits)["marks"], expected)


def test_eval_reports_ece_before_and_after_and_writes_reliability_diagrams(demo, tiny_run, tmp_path):
    result = evaluate(tiny_run, demo, split="val")
    for name, m in result["heads"].items():
        assert {"ece", "ece_uncalibrated"} <= set(m)
        assert 0 < m["ece_floor"] <= m["ece_floor_p95"] < 1
        curves = result["reliability"][name]
        assert set(curves) == {"before", "after"}
        assert abs(curves["after"]["ece"] - m["ece"]) < 1e-9
        assert sum(curves["before"]["count"]) == sum(curves["after"]["count"]) > 0
    temps = load_checkpoint(tiny_run)["temperatures"]
    changed = [n for n, t in temps.items() if abs(t - 1) > 0.05]
    assert changed and all(result["heads"][n]["ece"] != result["heads"][n]["ece_uncalibrated"] for n in changed)
    page = write_eval_report(tmp_path / "eval.html", result, "eval").read_text()
    assert page.count("reliability diagram of") == len(result["heads"])
