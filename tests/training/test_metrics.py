import numpy as np
import pytest
from sklearn import metrics as skm

from mhtag.training.metrics import (
    expected_calibration_error,
    multi_label_metrics,
    single_label_metrics,
    tune_thresholds,
)


def test_single_label_metrics_match_sklearn_and_skip_blank_labels():
    probs = np.array([[.7, .2, .1, 0], [.1, .8, .1, 0], [.2, .3, .5, 0], [.6, .3, .1, 0], [.1, .1, .1, .7],
                      [.5, .5, 0, 0]])
    y = np.array([0, 1, 1, 2, 3, -1])
    m = single_label_metrics(probs, y)
    pred = probs[:5].argmax(1)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y[:5], pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y[:5], pred))
    assert m["top3_accuracy"] == pytest.approx(1.0)  # every true class is in its row's top 3


def test_ece_of_known_inputs():
    probs = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 9 + [1])  # confidence .9, accuracy .9 -> perfectly calibrated
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)
    y_bad = np.array([0] * 5 + [1] * 5)  # accuracy .5 at confidence .9
    assert expected_calibration_error(probs, y_bad) == pytest.approx(0.4)


def test_multi_label_metrics_match_sklearn():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[.9, .2, .6], [.3, .7, .1], [.8, .4, .2], [.1, .1, .9]])
    th = np.array([.5, .5, .5])
    m = multi_label_metrics(probs, y, th)
    pred = (probs >= th).astype(int)
    assert m["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["micro_precision"] == pytest.approx(skm.precision_score(y, pred, average="micro"))
    assert m["micro_recall"] == pytest.approx(skm.recall_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["exact_match"] == pytest.approx(0.5)  # rows 0 and 1 exactly right
    assert m["hamming_accuracy"] == pytest.approx(1 - 2 / 12)  # row 2 misses tag 1, row 3 adds tag 2
    assert m["mAP"] == pytest.approx(skm.average_precision_score(y, probs, average="macro"))


def test_threshold_tuning_finds_the_separating_threshold():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 2)) < 0.3).astype(int)
    probs = np.where(y == 1, rng.uniform(0.25, 0.35, y.shape), rng.uniform(0.0, 0.2, y.shape))
    probs[:, 1] = 0.5  # tag 1 carries no signal
    th = tune_thresholds(probs, y)
    assert 0.2 <= th[0] <= 0.25
    assert skm.f1_score(y[:, 0], probs[:, 0] >= th[0]) == 1.0
    assert tune_thresholds(probs, np.zeros_like(y))[0] == 0.5  # no positives: stays at 0.5


def test_vectorised_threshold_tuning_matches_a_per_threshold_search():
    import numpy as np
    from sklearn.metrics import f1_score

    from mhtag.training.metrics import tune_thresholds

    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.3).astype(np.float32)
    y[:, 5] = 0  # a tag with no positive row keeps 0.5
    probs = np.clip(0.6 * y + 0.5 * rng.random((300, 6)), 0, 1)
    grid = np.linspace(0.05, 0.95, 19)
    expect = [grid[int(np.argmax([f1_score(y[:, t], probs[:, t] >= g, zero_division=0) for g in grid]))]
              for t in range(5)]
    got = tune_thresholds(probs, y)
    assert np.allclose(got[:5], expect) and got[5] == 0.5


def test_single_label_metrics_equal_scikit_learns():
    import numpy as np
    from sklearn import metrics as skm

    from mhtag.training.metrics import single_label_metrics

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(7), 500)
    y = rng.choice([0, 1, 2, 4, 5], 500)  # classes 3 and 6 never true, but some are predicted
    m = single_label_metrics(probs, y)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["balanced_accuracy"] == pytest.approx(skm.recall_score(y, pred, labels=np.unique(y), average="macro"))
    assert m["macro_f1_true_classes"] == pytest.approx(skm.f1_score(y, pred, labels=np.unique(y), average="macro"))
    assert m["macro_f1_true_classes"] > m["macro_f1"]  # the never-true classes 3 and 6 each add a zero to the latter
    assert m["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3, labels=np.arange(7)))


@pytest.mark.parametrize("seed", range(5))
def test_multi_label_metrics_equal_scikit_learns_with_ties_and_empty_tags(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((200, 7)) < 0.3).astype(int)
    y[:, 6] = 0  # a tag with no positive row
    probs = np.round(rng.random((200, 7)), 1)  # coarse scores: many ties
    th = rng.uniform(0.2, 0.8, 7)
    m = multi_label_metrics(probs, y, th)
    pred = (probs >= th).astype(int)
    assert m["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["hamming_accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred))
    assert m["mAP"] == pytest.approx(skm.average_precision_score(y[:, :6], probs[:, :6], average="macro"))
