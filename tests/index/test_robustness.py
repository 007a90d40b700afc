"""Controlled shifts (`data.shifts`) and the robustness evaluation built on them (`mhtag eval --shift`)."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mhtag.core.errors import MhtagError
from mhtag.data.shifts import SHIFTS, apply_shift
from mhtag.index.predict import predict
from mhtag.index.robustness import evaluate_shifts


def _catalogue_photo() -> Image.Image:
    """A dark-red object centred on white, as a catalogue shoots it."""
    pixels = np.full((80, 60, 3), 255, np.uint8)
    pixels[20:60, 15:45] = (150, 20, 30)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_every_shift_is_reproducible_keeps_the_size_and_changes_the_photo(name):
    img = _catalogue_photo()
    a, b = apply_shift(name, img, seed=7), apply_shift(name, img, seed=7)
    assert a.size == img.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(img))


def test_background_shifts_replace_the_white_and_keep_the_object():
    img = _catalogue_photo()
    for name in ("coloured_background", "cluttered_background"):
        out = np.asarray(apply_shift(name, img, seed=1))
        assert (out[20:60, 15:45] == (150, 20, 30)).all()
        assert not (out[:10] >= 235).all(-1).any(), name  # no white left in the top band


def test_off_centre_small_shrinks_the_object():
    out = np.asarray(apply_shift("off_centre_small", _catalogue_photo(), seed=3))
    dark = (out < 200).any(-1)
    assert 0.25 < dark.sum() / (40 * 30) < 0.5  # 0.6 x 0.6 = 0.36 of its area


def test_clean_scores_are_the_predict_commands_answers(demo, indexed):
    db, _ = indexed
    result = evaluate_shifts(demo, db, split="test", shifts=["jpeg_30", "low_resolution"])
    assert list(result["shifts"]) == ["clean", "jpeg_30", "low_resolution"]
    frame = pd.read_csv(demo, dtype=str)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    assert result["n"] == len(test)
    own = predict([demo.parent / p for p in test["path"]], db).predictions  # indexed rows: no self-votes
    for attr in result["attributes"]:
        for source, pick in (("head", lambda a: a.head[0][0]), ("fused", lambda a: a.fused.label)):
            expected = np.mean([pick(p.attributes[attr]) == want for p, want in zip(own, test[attr], strict=True)])
            assert abs(result["shifts"]["clean"][source][attr] - expected) < 1e-3, (attr, source)
    assert result == evaluate_shifts(demo, db, split="test", shifts=["jpeg_30", "low_resolution"])  # reruns agree


def test_unknown_shift_is_a_clear_error(demo, indexed):
    db, _ = indexed
    with pytest.raises(MhtagError, match="unknown shift 'fog'; choose from coloured_background"):
        evaluate_shifts(demo, db, shifts=["fog"])


def test_eval_shift_through_the_cli(demo, indexed, tiny_run):
    from typer.testing import CliRunner

    from mhtag.cli import app

    db, _ = indexed
    runner = CliRunner()
    out = runner.invoke(app, ["eval", "--shift", "--model", str(tiny_run), "--labels", str(demo), "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "colour / fused" in out.output and "brightness" in out.output
    data = json.loads(runner.invoke(app, ["eval", "--shift", "--model", str(tiny_run), "--labels", str(demo),
                                          "--db", str(db), "--json"]).output)
    assert set(data["shifts"]) == {"clean", *SHIFTS}
