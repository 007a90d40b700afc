"""Temperature scaling: fitted on validation rows, stored with the model, applied wherever probabilities are."""

import numpy as np
import torch

from mhtag.index.store import open_table, read_columns
from mhtag.models.checkpoint import load_checkpoint, tagger_from_checkpoint
from mhtag.training.calibration import apply_temperature, fit_temperature
from mhtag.training.metrics import expected_calibration_error


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
