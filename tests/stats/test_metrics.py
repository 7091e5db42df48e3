"""compute_metrics and format_table against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bottleneck.errors import InputError
from bottleneck.stats.metrics import compute_metrics, format_table, log_softmax, ovr_scores


def onehot_proba(pred, c: int, conf: float = 0.8) -> np.ndarray:
    """(N, C) rows summing to 1 whose argmax is `pred`."""
    pred = np.asarray(pred)
    p = np.full((len(pred), c), (1 - conf) / (c - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def strict_json(result: dict) -> dict:
    """Round-trip through JSON with NaN forbidden: fails on numpy types and NaN alike."""
    return json.loads(json.dumps(result, allow_nan=False))


# --- compute_metrics ---------------------------------------------------------------------------------------

def test_three_class_example_matches_hand_computation():
    names = ["a", "b", "c"]
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    r = compute_metrics(y, onehot_proba(pred, 3), names)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    # recalls a 2/3, b 1/2, c 1/1
    assert r["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions: a 2/2, b 1/2, c 1/2
    assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert r["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert r["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert isinstance(r["per_class"]["a"]["support"], int)
    assert strict_json(r) == r


def test_always_majority_has_balanced_accuracy_one_over_c_and_equals_the_baseline():
    names = ["nv", "bcc", "mel", "bkl"]
    y = np.array([0] * 90 + [1] * 4 + [2] * 3 + [3] * 3)
    r = compute_metrics(y, onehot_proba(np.zeros(len(y), int), 4), names, train_labels=y)
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["balanced_accuracy"] == pytest.approx(1 / 4)
    base = r["majority_baseline"]
    assert base["class"] == "nv"
    assert base["accuracy"] == pytest.approx(r["accuracy"])
    assert base["balanced_accuracy"] == pytest.approx(r["balanced_accuracy"])
    assert r["melanoma"] == {"class": "mel", "sensitivity": 0.0, "specificity": 1.0, "support": 3}


def test_majority_baseline_comes_from_train_labels_when_given():
    names = ["a", "b"]
    y = np.array([0, 0, 0, 1])
    r = compute_metrics(y, onehot_proba(y, 2), names, train_labels=np.array([1, 1, 0, -1]))  # -1: unlabeled
    assert r["majority_baseline"] == {"class": "b", "accuracy": 0.25, "balanced_accuracy": 0.5}
    assert compute_metrics(y, onehot_proba(y, 2), names)["majority_baseline"]["class"] == "a"


@pytest.mark.parametrize("mel_name", ["mel", "MEL", "Melanoma"])
def test_melanoma_sensitivity_and_specificity(mel_name):
    names = ["nv", mel_name, "bcc"]
    y = np.array([1, 1, 1, 1, 0, 0, 0, 2, 2])
    pred = np.array([1, 1, 1, 0, 0, 1, 0, 2, 1])  # 3 of 4 melanomas found; 2 of 5 others called melanoma
    r = compute_metrics(y, onehot_proba(pred, 3), names)
    assert r["melanoma"]["class"] == mel_name
    assert r["melanoma"]["support"] == 4
    assert r["melanoma"]["sensitivity"] == pytest.approx(3 / 4)
    assert r["melanoma"]["specificity"] == pytest.approx(3 / 5)


def test_melanoma_sensitivity_none_without_melanoma_cases():
    y = np.array([0, 0, 2])
    r = compute_metrics(y, onehot_proba(np.array([0, 1, 2]), 3), ["nv", "mel", "bcc"])
    assert r["melanoma"] == {"class": "mel", "sensitivity": None, "specificity": pytest.approx(2 / 3),
                             "support": 0}


def test_no_melanoma_class_gives_none():
    y = np.array([0, 1, 2])
    r = compute_metrics(y, onehot_proba(y, 3), ["nv", "bcc", "melanocytic"])  # a prefix is not a match
    assert r["melanoma"] is None


def test_class_missing_from_y_true_is_reported_without_nan():
    names = ["a", "b", "c", "d"]
    y = np.array([0, 0, 1, 1, 2, 2])  # no "d"
    pred = np.array([0, 3, 1, 1, 2, 0])  # and it is still predicted once
    r = strict_json(compute_metrics(y, onehot_proba(pred, 4), names))
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["roc_auc_per_class"]["d"] is None
    assert all(r["roc_auc_per_class"][n] is not None for n in "abc")
    assert r["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # over the 3 present classes
    assert r["roc_auc_macro"] == pytest.approx(np.mean([r["roc_auc_per_class"][n] for n in "abc"]))
    assert len(r["confusion_matrix"]) == 4 and r["confusion_matrix"][3] == [0, 0, 0, 0]


def test_single_sample():
    r = strict_json(compute_metrics(np.array([1]), onehot_proba([1], 3), ["a", "mel", "c"]))
    assert r["n"] == 1 and r["accuracy"] == 1.0 and r["balanced_accuracy"] == 1.0
    assert r["roc_auc_macro"] is None and set(r["roc_auc_per_class"].values()) == {None}
    assert r["melanoma"] == {"class": "mel", "sensitivity": 1.0, "specificity": None, "support": 1}


def test_binary_auc_equals_sklearn_on_the_positive_column():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=50)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, size=50), 0, 1)
    proba = np.stack([1 - p1, p1], axis=1)
    r = compute_metrics(y, proba, ["benign", "malignant"])
    assert r["roc_auc_macro"] == pytest.approx(roc_auc_score(y, p1))
    assert r["roc_auc_per_class"]["malignant"] == pytest.approx(roc_auc_score(y, p1))
    assert r["roc_auc_per_class"]["benign"] == pytest.approx(roc_auc_score(y, p1))
    strict_json(r)


def test_perfect_predictions_give_auc_one():
    y = np.array([0, 1, 2, 0, 1, 2])
    r = compute_metrics(y, onehot_proba(y, 3), ["a", "b", "c"])
    assert r["roc_auc_macro"] == 1.0
    assert r["accuracy"] == r["balanced_accuracy"] == 1.0


@pytest.mark.parametrize("y, proba, names, match", [
    (np.array([0, 1]), np.ones((2, 3)) / 3, ["a", "b"], r"shape \(N, C\) = \(2, 2\).*got \(2, 3\)"),
    (np.array([0, 5]), np.ones((2, 2)) / 2, ["a", "b"], r"class index 5 outside 0\.\.1"),
    (np.array([0, -1]), np.ones((2, 2)) / 2, ["a", "b"], r"class index -1.*drop unlabeled rows"),
    (np.array([], dtype=int), np.ones((0, 2)), ["a", "b"], r"y_true is empty"),
    (np.array([[1, 0]]), np.ones((1, 2)) / 2, ["a", "b"], r"1-D class indices.*one-hot"),
    (np.array([0, 1]), np.array([[np.nan, 1], [0.5, 0.5]]), ["a", "b"], r"NaN"),
])
def test_bad_input_names_the_value(y, proba, names, match):
    with pytest.raises(InputError, match=match):
        compute_metrics(y, proba, names)


# --- AUC from log-probabilities, not saturated probabilities ------------------------------------------------

def float32_softmax(z: np.ndarray) -> np.ndarray:
    """What a Keras softmax layer gives: probabilities computed in float32."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def independent_ovr(logp: np.ndarray) -> np.ndarray:
    """One-vs-rest log-odds with scipy: what a reviewer computes from predictions.csv's logp_ columns."""
    from scipy.special import logsumexp

    return np.stack([logp[:, k] - logsumexp(np.delete(logp, k, axis=1), axis=1) for k in range(logp.shape[1])], 1)


def test_auc_ranks_logits_where_float32_probabilities_saturate_and_tie():
    # class "a" against the rest: its float32 probability is exactly 1.0 on rows 0-4 (and the others underflow to
    # exactly 0 on rows 0, 1 and 3), so those rows tie although their logits rank them
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    z = np.zeros((8, 3))
    z[:, 0] = [120, 118, 30, 115, 20, -1, -2, -3]
    p32 = float32_softmax(z)
    assert (p32[:5, 0] == 1.0).all() and (p32[[0, 1, 3], 1:] == 0).all()
    assert roc_auc_score(y == 0, p32[:, 0]) == pytest.approx(12 / 15)  # what an AUC of the probabilities says
    logp = log_softmax(z)
    r = compute_metrics(y, np.exp(logp), ["a", "b", "c"], log_proba=logp)
    assert r["roc_auc_per_class"]["a"] == 14 / 15  # 120 and 118 rank above the class-b row at 115, 30 below it
    assert r["roc_auc_per_class"]["a"] == roc_auc_score(y == 0, independent_ovr(logp)[:, 0])
    for k, n in enumerate("abc"):
        assert r["roc_auc_per_class"][n] == roc_auc_score(y == k, independent_ovr(logp)[:, k])
    assert r["roc_auc_macro"] == np.mean([r["roc_auc_per_class"][n] for n in "abc"])


def test_log_softmax_keeps_a_probability_near_one_apart_from_one():
    logp = log_softmax(np.array([[0.0, -50.0], [0.0, -60.0], [0.0, 0.0], [2000.0, 0.0]]))
    assert logp[0, 0] < logp[1, 0] < 0  # exp(-50) and exp(-60) from 1: float64 1.0 - 2e-22 would be 1.0
    np.testing.assert_allclose(logp[0, 0], -np.exp(-50.0), rtol=1e-12)
    np.testing.assert_allclose(logp[2], np.log([0.5, 0.5]), rtol=1e-15)
    assert logp[3, 1] == -2000.0 and logp[3, 0] == 0.0  # no overflow, no NaN


def test_a_binary_task_reports_one_auc_the_positive_classes_even_when_the_other_saturates():
    # melanoma against the rest, mel first (as a sorted class map gives it): p_other rounds to 1.0 in float32
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    d = np.array([-20.0, -22.0, 5.0, -25.0, -30.0, -40.0, 3.0])  # logit of mel minus logit of other
    z = np.stack([d, np.zeros_like(d)], axis=1)
    p32 = float32_softmax(z)
    assert (p32[[0, 1, 3, 4, 5], 1] == 1.0).all()
    old = compute_metrics(y, p32.astype(np.float64), ["mel", "other"])
    logp = log_softmax(z)
    r = compute_metrics(y, np.exp(logp), ["mel", "other"], log_proba=logp)
    truth = roc_auc_score(y == 0, d)  # 10 of 12 pairs
    assert truth == pytest.approx(10 / 12)
    assert r["roc_auc_per_class"] == {"mel": truth, "other": truth} and r["roc_auc_macro"] == truth
    assert r["roc_auc_macro"] == roc_auc_score(y == 0, independent_ovr(logp)[:, 0])
    assert roc_auc_score(y == 1, independent_ovr(logp)[:, 1]) == pytest.approx(truth, abs=1e-12)
    assert old["roc_auc_per_class"]["mel"] == old["roc_auc_per_class"]["other"] == old["roc_auc_macro"]
    np.testing.assert_array_equal(ovr_scores(logp)[:, 0], -ovr_scores(logp)[:, 1])  # exact mirror images


def test_not_most_probable_counts_rows_the_decision_weights_moved():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    r = compute_metrics(y, proba, ["nv", "mel"], decision_weights=(1.0, 3.0))  # 0.3 x 3 > 0.7, 0.4 x 3 > 0.6
    assert r["not_most_probable"] == {"rows": 2, "share": 0.5}
    assert compute_metrics(y, proba, ["nv", "mel"])["not_most_probable"] == {"rows": 0, "share": 0.0}


def test_log_proba_of_another_shape_or_with_nan_is_refused():
    proba = np.full((2, 2), 0.5)
    with pytest.raises(InputError, match=r"log_proba must have the shape of proba \(2, 2\)"):
        compute_metrics(np.array([0, 1]), proba, ["a", "b"], log_proba=np.zeros((2, 3)))
    with pytest.raises(InputError, match="NaN or positive"):
        compute_metrics(np.array([0, 1]), proba, ["a", "b"], log_proba=np.array([[np.nan, 0.0], [0.0, 0.0]]))


# --- format_table ------------------------------------------------------------------------------------------

def test_format_table_shows_each_split_and_dashes_for_missing_values():
    y = np.array([0, 0, 1, 2])
    with_mel = compute_metrics(y, onehot_proba(y, 3), ["nv", "mel", "bcc"])
    no_mel = compute_metrics(y, onehot_proba(y, 3), ["nv", "bkl", "bcc"])
    table = format_table({"val": with_mel, "test": no_mel, "external": with_mel})
    lines = table.splitlines()
    assert "balanced acc" in lines[0] and "majority bal acc" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert set(rows) == {"val", "test", "external"}
    assert rows["val"][5:7] == ["1.000", "1.000"]  # mel sens, mel spec
    assert rows["test"][5:7] == ["-", "-"]  # no melanoma class
    assert rows["val"][7] == "0.333"  # always "nv": 1 of 3 present classes recalled
    assert max(len(line) for line in lines) <= 100
    assert any(line.split()[:1] == ["bkl"] and line.split()[1:] == ["-", "1.000", "-"] for line in lines)
