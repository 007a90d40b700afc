import json

import numpy as np
from typer.testing import CliRunner

from mhtag import cli
from mhtag.index import index_images
from mhtag.predict import fuse, neighbour_shares, predict
from mhtag.store import read_meta


def test_predict_json_schema(indexed, demo):
    db, _ = indexed
    res = CliRunner().invoke(cli.app, ["predict", str(demo.parent / "images" / "00001.png"),
                                       str(demo.parent / "images" / "00002.png"), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["predictions"]) == 2
    p = out["predictions"][0]
    assert p["path"].endswith("00001.png")
    assert set(p["attributes"]) == {"shape", "colour", "size", "background", "marks"}
    colour = p["attributes"]["colour"]
    assert set(colour) == {"head", "neighbours", "fused", "agree"}
    assert len(colour["head"]) == 3 and all(isinstance(lab, str) and 0 <= pr <= 1 for lab, pr in colour["head"])
    assert abs(sum(s for _, s in colour["neighbours"]) - 1) < 1e-3 or len(colour["neighbours"]) == 3
    assert set(colour["fused"]) == {"label", "confidence"} and isinstance(colour["agree"], bool)
    assert isinstance(p["attributes"]["marks"]["fused"]["label"], list)


def test_an_image_never_votes_for_itself(indexed, demo, tmp_path):
    db, _ = indexed
    import shutil

    own = demo.parent / "images" / "00001.png"
    out = predict([own], db, k=1)
    nbr = out["predictions"][0]["attributes"]["shape"]["neighbours"]
    assert len(nbr) == 1 and nbr[0][1] == 1.0  # one neighbour, and it is another image
    # a byte-identical copy elsewhere is a different image: its nearest neighbour is the indexed original
    copy = tmp_path / "copy.png"
    shutil.copy(own, copy)
    labels = dict(line.split(",")[:3:2] for line in demo.read_text().splitlines()[1:])
    nbr = predict([copy], db, k=1)["predictions"][0]["attributes"]["colour"]["neighbours"]
    assert nbr == [[labels["images/00001.png"], 1.0]]


def test_neighbour_only_mode_and_unknown_under_threshold(demo, tmp_path, monkeypatch):
    monkeypatch.setattr("mhtag.predict.DEFAULT_BACKBONE", "tiny_cnn")
    monkeypatch.setattr("mhtag.index.DEFAULT_BACKBONE", "tiny_cnn")
    db = tmp_path / "db"
    index_images(demo.parent, db, labels=demo, workers=0)
    img = demo.parent / "images" / "00010.png"
    out = predict([img], db, k=5)["predictions"][0]["attributes"]
    assert out["colour"]["head"] == [] and out["colour"]["neighbours"] and out["colour"]["agree"] is None
    assert out["colour"]["fused"]["label"] == out["colour"]["neighbours"][0][0]
    unknown = predict([img], db, k=5, min_similarity=1.01)["predictions"][0]["attributes"]
    assert unknown["colour"]["fused"]["label"] == "unknown"


def test_fusion_weight_is_stored_with_the_index(indexed):
    db, _ = indexed
    fusion = read_meta(db).fusion
    assert set(fusion) == {"shape", "colour", "size", "background"}
    assert all(0 <= w <= 1 for w in fusion.values())


def test_vote_and_fusion_arithmetic():
    shares = neighbour_shares(np.array([0.9, 0.9, 0.5]), np.array(["a", "b", ""], dtype=object), "single")
    assert shares == {"a": 0.5, "b": 0.5}  # the unlabelled neighbour does not vote
    closer = neighbour_shares(np.array([0.95, 0.85]), np.array(["a", "b"], dtype=object), "single")
    assert closer["a"] > 0.8  # similarity-weighted
    tags = neighbour_shares(np.array([0.9, 0.9]), np.array(["|x|y|", "|x|"], dtype=object), "multi")
    assert tags == {"x": 1.0, "y": 0.5}
    assert fuse({"a": 0.8, "b": 0.2}, {"b": 1.0}, 0.25) == {"b": 0.8, "a": 0.2}
    assert fuse({"a": 1.0}, {}, 0.0) == {"a": 1.0}
