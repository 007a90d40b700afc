"""Words as queries and tags: a text tower learned from captions (saved with the model, loaded safely), text search
combined with filters, a clear refusal where an index has no tower, zero-shot attributes in predict and in the
index (calibrated on labels where there are some), describe, awkward captions, and open_clip's own text tower on a
randomly initialised small config."""

import numpy as np
import pandas as pd
import pytest
from conftest import AWKWARD

from mhtag.core.errors import MhtagError
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.predict import Words, predict
from mhtag.index.search import search
from mhtag.inference.words import ZeroShot, parse_zero_shot, text_tower
from mhtag.models.text import LearnedTextTower, load_text_tower, save_text_tower


def test_the_tower_is_saved_with_the_model_and_loads_without_running_code(captioned):
    _, _, run, _, report = captioned
    tower = load_text_tower(run)
    assert isinstance(tower, LearnedTextTower) and tower.phrases and report.kept_epoch >= 1
    x = tower.encode(AWKWARD)  # empty, very long (cut at the context), non-Latin: each a unit vector
    assert x.shape == (len(AWKWARD), tower.dim) and np.allclose(x.norm(dim=1).numpy(), 1, atol=1e-5)
    assert "red" in tower.phrases and not any(p.startswith("item 1") for p in tower.phrases)  # rare words cut


def test_a_text_query_ranks_by_the_words_and_combines_with_filters(captioned):
    _, csv, _, db, _ = captioned
    truth = pd.read_csv(csv, keep_default_na=False).set_index("path")
    shares = []
    for colour in ("red", "green", "blue", "yellow"):
        found = search(db, text=colour, limit=10)
        assert found.ranked_by == "similarity"
        shares.append(np.mean([truth.loc[f"images/{h.rel.split('/')[-1]}", "colour"] == colour for h in found.results]))
    assert np.mean(shares) >= 0.4  # against 0.25 for any ten rows (a tiny CNN's features, 111 captions)
    small = search(db, {"size": ["small"]}, text="red circle", limit=15, source="label")
    assert small.results and all(h.size_label == "small" for h in small.results)


def test_an_index_without_a_text_tower_refuses_text_in_one_line(indexed):
    with pytest.raises(MhtagError, match="needs a text tower.*mhtag train --captions"):
        search(indexed[0], text="red circle")


def test_zero_shot_in_predict_and_in_the_index_calibrated_on_known_labels(captioned):
    root, csv, run, db, _ = captioned
    image = sorted((root / "images").iterdir())[7]
    asked = Words([ZeroShot("tone", ["red", "green", "blue", "yellow"])], describe=True)
    p = predict([image], db, words=asked).predictions[0]
    tone = p.attributes["tone"]
    assert tone.zero_shot and not p.attributes["colour"].zero_shot
    assert sum(share for _, share in tone.head) <= 1 + 1e-6 and tone.fused.label in {"red", "green", "blue", "yellow"}
    assert p.described and all(phrase in text_tower(run / "best.pt").phrases for phrase, _ in p.described)
    report = index_images(root, db, options=IndexOptions(workers=0, zero_shot=["hue=red,green,blue,yellow"]))
    assert report.zero_shot == ["hue"]
    from mhtag.index.meta import require_meta

    hue = require_meta(db).attribute("hue")
    assert hue.zero_shot and hue.has_head and hue.has_labels and hue.temperature is not None  # calibrated on labels
    found = search(db, {"hue": ["red"]}, source="pred", limit=200)
    assert found.matched > 0 and all(h.hue_pred == "red" for h in found.results)
    with pytest.raises(MhtagError, match="trained head of that name"):
        index_images(root, db, options=IndexOptions(workers=0, zero_shot=["colour=red,blue"]))


def test_zero_shot_specs_are_checked():
    assert parse_zero_shot(" pattern = striped, checked ,striped").values == ["striped", "checked"]
    for bad in ("pattern", "pattern=striped", "=a,b"):
        with pytest.raises(MhtagError, match="NAME=VALUE"):
            parse_zero_shot(bad)


def test_a_damaged_tower_file_is_one_line(tmp_path):
    (tmp_path / "text_tower.pt").write_bytes(b"not a tower")
    with pytest.raises(MhtagError, match="not a text tower"):
        load_text_tower(tmp_path)
    (tmp_path / "other").mkdir()
    assert load_text_tower(tmp_path / "other") is None


@pytest.mark.slow
def test_open_clip_keeps_its_text_tower_with_the_model(demo, tmp_path):
    """A randomly initialised small open_clip config end to end: its text tower saved beside a probe, the index
    records the space, and text search and zero-shot run."""
    import open_clip

    from mhtag.core.config import load_config
    from mhtag.models.text import ClipTextTower
    from mhtag.training.fit import fit

    open_clip.factory._MODEL_CONFIGS["mhtag-tiny-clip"] = {
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg = load_config(overrides={"backbone": "open_clip/mhtag-tiny-clip", "pretrained": False, "multilabel": ["marks"],
                                 "probe_epochs": 2, "mode": "probe", "num_workers": 0, "report": False,
                                 "image_size": [32, 32]})
    run = fit(cfg, demo, out=tmp_path / "run")
    tower = load_text_tower(run.dir)
    assert isinstance(tower, ClipTextTower) and tower.dim == 32
    db = tmp_path / "db"
    index_images(demo.parent, db, model=run.dir, labels=demo, options=IndexOptions(workers=0))
    from mhtag.index.info import index_health

    assert index_health(db).text_search
    assert len(search(db, text="a red circle", limit=5).results) == 5
    p = predict([demo.parent / "images" / "00001.png"], db,
                words=Words([ZeroShot("tone", ["red", "blue"])])).predictions[0]
    assert p.attributes["tone"].zero_shot
    again = ClipTextTower("mhtag-tiny-clip", config=tower.settings["config"])
    save_text_tower(again, tmp_path)
    assert load_text_tower(tmp_path).encode(["red"]).shape == (1, 32)
