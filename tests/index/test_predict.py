import json
import logging
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mhtag import cli
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.meta import read_meta, write_meta
from mhtag.index.neighbours import validation_votes
from mhtag.index.predict import Predictor, predict
from mhtag.inference.fusion import fuse, log_score, neighbour_shares, tune_fusion, tune_head_weight, vote_matrix
from mhtag.training.metrics import macro_f1_of


def _dump(result):
    return result.model_dump(mode="json")


def test_predict_json_schema_and_head_probabilities(indexed, demo):
    db, _ = indexed
    res = CliRunner().invoke(cli.app, ["predict", str(demo.parent / "images" / "00001.png"),
                                       str(demo.parent / "images" / "00002.png"), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["predictions"]) == 2 and out["failed"] == []
    p = out["predictions"][0]
    assert p["path"].endswith("00001.png")
    assert set(p["attributes"]) == {"shape", "colour", "size", "background", "marks"}
    colour = p["attributes"]["colour"]
    assert set(colour) == {"head", "neighbours", "fused", "agree", "zero_shot"}
    probs = [pr for _, pr in colour["head"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-3
    shares = neighbour_shares_of(colour)
    assert shares == sorted(shares, reverse=True) and 0.5 < sum(shares) <= 1 + 1e-3
    assert isinstance(colour["agree"], bool) and colour["agree"] == (colour["head"][0][0] == colour["neighbours"][0][0])
    assert isinstance(p["attributes"]["marks"]["fused"]["label"], list)


def neighbour_shares_of(answer):
    return [s for _, s in answer["neighbours"]]


def test_an_image_never_votes_for_itself(indexed, demo, tmp_path):
    db, _ = indexed
    own = demo.parent / "images" / "00001.png"
    nbr = _dump(predict([own], db, k=1))["predictions"][0]["attributes"]["shape"]["neighbours"]
    assert len(nbr) == 1 and nbr[0][1] == 1.0  # one neighbour, and it is another image
    # a byte-identical copy elsewhere is a different image: its nearest neighbour is the indexed original
    copy = tmp_path / "copy.png"
    shutil.copy(own, copy)
    labels = dict(line.split(",")[:3:2] for line in demo.read_text().splitlines()[1:])
    nbr = _dump(predict([copy], db, k=1))["predictions"][0]["attributes"]["colour"]["neighbours"]
    assert nbr == [[labels["images/00001.png"], 1.0]]


def test_neighbour_only_mode_and_unknown_under_threshold(demo, tmp_path, monkeypatch):
    monkeypatch.setattr("mhtag.index.build.DEFAULT_BACKBONE", "tiny_cnn")
    db = tmp_path / "db"
    index_images(demo.parent, db, labels=demo, options=IndexOptions(workers=0))
    img = demo.parent / "images" / "00010.png"
    out = _dump(predict([img], db, k=5))["predictions"][0]["attributes"]
    assert out["colour"]["head"] == [] and out["colour"]["neighbours"] and out["colour"]["agree"] is None
    assert out["colour"]["fused"]["label"] == out["colour"]["neighbours"][0][0]
    unknown = _dump(predict([img], db, k=5, min_similarity=1.01))["predictions"][0]["attributes"]
    assert unknown["colour"]["fused"]["label"] == "unknown"


def test_predict_uses_the_k_the_fusion_was_tuned_with_and_warns_when_overridden(indexed, caplog):
    db, _ = indexed
    meta = read_meta(db)
    meta.fusion_k = 7
    write_meta(db, meta)
    assert Predictor(db).k == 7
    with caplog.at_level(logging.WARNING):
        assert Predictor(db, k=3).k == 3
    assert "k=3 differs from the k=7" in caplog.text


def test_fusion_weights_follow_the_better_witness():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    perfect = np.eye(3)[y]
    noise = rng.dirichlet(np.ones(3), 200)
    # from w = 0.5 on, a one-hot witness always wins: the first weight reaching the best score is chosen
    assert tune_head_weight(perfect, noise, y, macro_f1_of) == 0.5  # the head is right, the vote is noise
    assert tune_head_weight(noise, perfect, y, macro_f1_of) == 0.0
    assert tune_head_weight(noise, 0.3 * perfect + 0.7 * noise, y, macro_f1_of) < 0.5


def _votes(sims, labels, taus):
    return {tau: vote_matrix(sims, labels, ["a", "b", "c"], tau) for tau in taus}


def test_the_vote_temperature_follows_where_the_truth_lies():
    """Nearest neighbour right, the next four a crowd for one wrong label: the sharp vote wins. The nearest
    neighbour noise and the crowd right: the soft vote wins. The head (uniform) learns nothing either way."""
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    names = np.array(["a", "b", "c"], dtype=object)
    sims = np.tile([0.95, 0.9, 0.9, 0.9, 0.9], (n, 1))
    wrong = names[(y + 1) % 3]
    nearest_right = np.stack([names[y]] + [wrong] * 4, axis=1)
    crowd_right = np.stack([names[rng.integers(0, 3, n)]] + [names[y]] * 4, axis=1)
    head = np.full((n, 3), 1 / 3)
    w, tau = tune_fusion(head, _votes(sims, nearest_right, (0.005, 0.05, 0.5)), y)
    assert tau == 0.005 and w < 0.5
    w, tau = tune_fusion(head, _votes(sims, crowd_right, (0.005, 0.05, 0.5)), y)
    assert tau == 0.5 and w < 0.5
    assert log_score(np.eye(3)[y], y) == 0.0


def test_the_vote_matrix_is_the_vote_of_each_row():
    sims = np.array([[0.9, 0.8, 0.7], [0.9, 0.5, 0.0]])
    labels = np.array([["a", "b", "a"], ["c", "", "z"]], dtype=object)  # "" has no label, "z" is not a class
    m = vote_matrix(sims, labels, ["a", "b", "c"], 0.05)
    shares = neighbour_shares(sims[0], labels[0], False, 0.05)
    assert np.allclose(m[0], [shares["a"], shares["b"], 0.0])
    assert m[1, 2] == pytest.approx(1 / (1 + np.exp(-0.9 / 0.05))) and m[1, :2].sum() == 0
    rng = np.random.default_rng(0)  # every row at once equals row by row, for classes and for tags
    cells = np.array(["a", "b", "c", "z", "", "|a|", "|a|c|", "|b|z|"], dtype=object)
    sims = rng.uniform(-0.2, 1.0, (50, 7))
    for multi, pool in ((False, cells[:5]), (True, cells[4:])):
        labels = rng.choice(pool, (50, 7))
        labels[0] = ""  # a row without a known voter votes for nothing
        m = vote_matrix(sims, labels, ["a", "b", "c"], 0.02, multi)
        for r in range(50):
            shares = neighbour_shares(sims[r], labels[r], multi, 0.02)
            assert np.allclose(m[r], [shares.get(c, 0.0) for c in "abc"], atol=1e-6)


def test_a_tag_group_votes_per_tag_and_is_tuned_by_its_tags_likelihood():
    """Each tag's share is the vote weight of the neighbours carrying it; with votes that know the tags and a head
    that does not, tuning trusts the vote, and a perfect answer scores a log-likelihood of 0."""
    sims = np.array([[0.9, 0.9], [0.9, 0.9]])
    labels = np.array([["|a|b|", "|a|"], ["", "|c|"]], dtype=object)
    m = vote_matrix(sims, labels, ["a", "b", "c"], 0.05, multi=True)
    assert np.allclose(m, [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])  # shares of one row may sum above 1
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.4).astype(np.float32)
    knowing_vote = 0.1 + 0.8 * y
    head = np.full_like(y, 0.4)
    w, _ = tune_fusion(head, {0.05: knowing_vote}, y)
    assert w == 0.0
    assert log_score(y, y) == pytest.approx(0.0, abs=1e-4)
    assert log_score(knowing_vote, y) > log_score(head, y)


def test_validation_votes_give_a_tag_group_its_tags_as_a_matrix(indexed):
    db, _ = indexed
    votes = validation_votes(db, 5)
    marks = votes["marks"]
    assert marks.multi and not votes["colour"].multi
    assert marks.y.shape == marks.head.shape == (len(marks.sims), len(marks.classes))
    assert set(np.unique(marks.y)) <= {0.0, 1.0} and (marks.y.sum(1) >= 1).all()  # unknown rows are left out
    assert marks.votes(0.05).shape == marks.y.shape


def test_predict_votes_with_the_temperature_tuned_for_each_attribute(indexed):
    db, _ = indexed
    img = str(read_meta(db).root) + "/images/00003.png"

    def colour_vote(tau):
        meta = read_meta(db)
        meta.fusion_tau["colour"] = tau
        write_meta(db, meta)
        return dict(_dump(predict([img], db))["predictions"][0]["attributes"]["colour"]["neighbours"])

    tuned = read_meta(db)
    try:
        sharp, soft = colour_vote(1e-4), colour_vote(10.0)
    finally:
        write_meta(db, tuned)  # the fixture's index is shared
    assert max(sharp.values()) == pytest.approx(1.0, abs=1e-3)  # the nearest neighbour alone
    assert max(soft.values()) < max(sharp.values())  # every neighbour about equally


def test_vote_and_fusion_arithmetic():
    shares = neighbour_shares(np.array([0.9, 0.9, 0.5]), np.array(["a", "b", ""], dtype=object), False)
    assert shares == {"a": 0.5, "b": 0.5}  # the unlabelled neighbour does not vote
    closer = neighbour_shares(np.array([0.95, 0.85]), np.array(["a", "b"], dtype=object), False)
    assert closer["a"] > 0.8  # similarity-weighted
    tags = neighbour_shares(np.array([0.9, 0.9]), np.array(["|x|y|", "|x|"], dtype=object), True)
    assert tags == {"x": 1.0, "y": 0.5}
    assert fuse({"a": 0.8, "b": 0.2}, {"b": 1.0}, 0.25) == {"b": 0.8, "a": 0.2}
    assert fuse({"a": 1.0}, {}, 0.0) == {"a": 1.0}
