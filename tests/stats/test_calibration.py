"""Calibration: ECE and Brier score of known cases, temperature scaling that recovers a known overconfidence (with
and without the class-weight prior), the calibration folded into a real head equal to the numpy one, and calibration
only where it helps: skipped on a small validation split, refused when cross-fitting shows it raises the held-out
NLL, a temperature at a bound flagged, before and after scored on the same decisions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, run_cli

from bottleneck.cache.store import load_cache
from bottleneck.runs.directory import load_run
from bottleneck.stats.calibration import (
    MIN_VAL_IMAGES,
    Calibration,
    brier_score,
    calibrate_on_validation,
    calibration_figures,
    expected_calibration_error,
    softmax,
)
from bottleneck.stats.metrics import decide


def test_ece_and_brier_of_known_cases():
    y = np.array([0, 1] * 50)
    sure = np.tile([0.9, 0.1], (100, 1))  # 90% confident, right half the time
    assert expected_calibration_error(y, sure) == pytest.approx(0.4)
    assert brier_score(y, np.eye(2)[y]) == 0 and brier_score(y, sure) == pytest.approx((0.01 * 2 + 0.81 * 2) / 2)


@pytest.mark.parametrize("weights", [None, {0: 0.5, 1: 1.0, 2: 4.0}])
def test_temperature_scaling_recovers_a_known_overconfidence(weights):
    """Labels drawn from softmax(z); the head says softmax(3 z) tilted by the class weights: T = 3 undoes it."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 3))
    true_p = softmax(z)
    y = np.array([rng.choice(3, p=p) for p in true_p])
    w = np.array([weights[k] for k in range(3)]) if weights else np.ones(3)
    head = softmax(3 * z + np.log(w))
    cal = Calibration.fit(head, y, weights)
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    calibrated = cal.apply(head)
    assert expected_calibration_error(y, calibrated) < 0.03 < expected_calibration_error(y, head)
    np.testing.assert_allclose(cal.undo(calibrated), head, atol=1e-9)
    assert (decide(calibrated, cal.decision_weights) == head.argmax(1)).all()  # decisions are the head's own


def test_calibration_folded_into_the_head_equals_the_numpy_one():
    from bottleneck.heads.model import HeadConfig, build_head, fold_calibration

    x = np.random.default_rng(0).normal(0, 1, (32, 8)).astype(np.float32)
    model = build_head(8, 3, HeadConfig(hidden=(6,), standardize=False))
    before = model.predict(x, verbose=0).astype(np.float64)
    cal = Calibration(0.6, (0.5, -0.2, 1.1), (1.0, 1.0, 1.0))
    fold_calibration(model, cal)
    np.testing.assert_allclose(model.predict(x, verbose=0), cal.apply(before), atol=1e-5)
    fold_calibration(model, cal, undo=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-5)


# --- calibration only where it helps --------------------------------------------------------------------------------

def drawn(n: int, scale: float, seed: int = 0):
    """(y, head probabilities): labels drawn from softmax(z), the head saying softmax(scale z), one lesion per image."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z)])
    return y, softmax(scale * z), np.array([f"L{k}" for k in range(n)])


def test_cross_fitting_applies_a_calibration_that_helps_on_held_out_lesions():
    y, head, groups = drawn(600, 3.0)
    cal, record = calibrate_on_validation(head, y, groups, None, ["a", "b", "c"], seed=0)
    assert cal is not None and record["applied"] and cal.temperature == pytest.approx(3.0, rel=0.15)
    cross = record["cross_fit"]
    assert cross["folds"] == 5 and cross["nll_after"] < cross["nll_before"] and len(cross["temperatures"]) == 5
    assert record["temperature"] == record["fitted_temperature"] and not record["flags"]


def test_calibration_on_a_10_image_validation_split_is_skipped_with_a_note():
    """The issue's case: 10 validation images, 1 melanoma. Nothing is fitted; the record says why and keeps the
    decision weights of the head's own probabilities (argmax: the same decisions)."""
    y = np.array([0] + [1] * 4 + [2] * 5)
    head = softmax(np.random.default_rng(0).normal(0, 2, (10, 3)))
    cal, record = calibrate_on_validation(head, y, np.array([""] * 10), {0: 3.0, 1: 1.0, 2: 0.5},
                                          ["mel", "nv", "bkl"])
    assert cal is None and not record["applied"] and Calibration.from_record(record) is None
    assert record["reason"].startswith("too few validation images to fit it on (10, of which mel 1, nv 4)")
    assert f"at least {MIN_VAL_IMAGES}" in record["reason"] and "cross_fit" not in record
    assert record["decision_weights"] == [1.0, 1.0, 1.0] and record["val_per_class"] == {"mel": 1, "nv": 4, "bkl": 5}
    assert record["prior_shift"] == pytest.approx(list(-np.log([3.0, 1.0, 0.5])))


def test_cross_fitting_refuses_a_temperature_that_raises_held_out_nll():
    """Every image says 80% class 0, right 80% of the time overall: T = 1 fits the whole split, but the lesions
    differ (right 100%, 100%, 60%, 60%, 80% of the time), so a temperature fitted without a lesion always moves
    away from that lesion's own rate: held out, it scores worse than the head, and is not applied."""
    y = np.concatenate([np.r_[np.zeros(10 - k, int), np.ones(k, int)] for k in (0, 0, 4, 4, 2)])
    groups = np.repeat([f"L{k}" for k in range(5)], 10)
    head = np.tile([0.8, 0.2], (50, 1))
    cal, record = calibrate_on_validation(head, y, groups, None, ["nv", "mel"])
    cross = record["cross_fit"]
    assert cal is None and not record["applied"] and cross["folds"] == 5
    assert cross["nll_after"] > cross["nll_before"] == pytest.approx(-np.log(0.8) * 0.8 - np.log(0.2) * 0.2)
    assert record["reason"].startswith("it did not help on validation") and "temperature" not in record
    assert record["fitted_temperature"] == pytest.approx(1.0, abs=1e-3)  # fitted, recorded, not applied


def test_a_temperature_at_a_bound_is_flagged():
    """A head 100 times less confident than the truth: the best temperature (0.01) lies below the search's 0.05."""
    y, head, groups = drawn(400, 0.01)
    cal, record = calibrate_on_validation(head, y, groups, None, ["a", "b", "c"])
    assert record["applied"] and cal.temperature == pytest.approx(0.05, rel=0.02)  # it still helps, so applied
    assert record["temperature_at_bound"] and "at the lower bound of its search (0.05-20)" in record["flags"][0]
    y, head, groups = drawn(400, 3.0)
    assert not calibrate_on_validation(head, y, groups, None, ["a", "b", "c"])[1]["temperature_at_bound"]


def test_before_and_after_score_the_same_decisions():
    """The calibration figures score the probability given to the run's decision, before and after alike."""
    y = np.array([0, 1, 1, 0])
    before = np.array([[0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.9, 0.1]])
    pred = np.array([1, 1, 1, 0])  # a decision rule that is not the argmax on rows 0 and 2
    f = calibration_figures(y, before, before, pred)
    conf = before[np.arange(4), pred]  # 0.4, 0.7, 0.45, 0.9; right on rows 1, 2, 3
    assert f["confidence_of"] == "the predicted class" and f["ece_before"] == f["ece_after"]
    assert f["ece_before"] == pytest.approx(np.mean(np.abs(conf - (pred == y))))  # one image per bin here
    assert f["ece_before"] != pytest.approx(expected_calibration_error(y, before))  # the argmax's figure differs


@pytest.mark.slow
def test_a_run_with_10_validation_images_keeps_the_head_s_own_probabilities(tmp_path):
    """70 images (as the issue's real photos), 10 of them for validation: train-head skips calibration and says so
    in metrics.json, config.json and the report; head.keras and predictions.csv hold the head's own probabilities."""
    cache = feature_cache(tmp_path / "c.h5", counts={"bkl": 16, "mel": 14, "nv": 40}, images_per_group=1)
    r = run_cli("train-head", cache, "--out", tmp_path / "run", "--epochs", "4", "--quiet")
    assert r.exit_code == 0, r.output
    d = tmp_path / "run"
    m, config = (json.loads((d / f).read_text()) for f in ("metrics.json", "config.json"))
    cal = m["calibration"]
    assert sum(config["split"]["sizes"]["val"]["per_class"].values()) == cal["val_images"] <= 12
    assert not cal["applied"] and cal["reason"].startswith("too few validation images to fit it on")
    assert config["calibration"] == {k: v for k, v in cal.items() if k != "test"}
    assert "ece_after" not in cal["test"] and config["operating_point"].get("threshold_uncalibrated") is None
    report = (d / "report.md").read_text()
    assert "Not calibrated: too few validation images" in report and "Calibration: not applied (too few" in report
    preds = pd.read_csv(d / "predictions.csv", keep_default_na=False)
    data_rows = [int(i[3:]) for i in preds["image_id"]]  # feature_cache's ids are img<row>
    x = load_cache(cache).features[data_rows]
    cols = ["p_bkl", "p_mel", "p_nv"]
    for calibrate in (True, False):  # nothing folded into head.keras: both give the same probabilities
        np.testing.assert_allclose(load_run(d, calibrate)[1].predict(x, verbose=0), preds[cols], atol=1e-5)


# --- the decision rule (DecisionRule, --decision) -----------------------------------------------------------------

CALIBRATED = {"calibration": {"applied": True, "temperature": 0.5, "prior_shift": [-1.0, 0.5],
                              "decision_weights": [7.389, 0.368]}}


def test_an_older_run_without_a_recorded_rule_keeps_the_balanced_rule_it_used():
    from bottleneck.stats.calibration import DecisionRule

    rule = DecisionRule.of(CALIBRATED)  # config.json of a run made before --decision: no "decision_rule"
    assert rule.rule == "balanced" and rule.decision_weights == (7.389, 0.368) and rule.calibrated
    assert DecisionRule.of(CALIBRATED, calibrate=False).decision_weights is None  # the head's own argmax
    assert DecisionRule.of({}).rule == "balanced" and DecisionRule.of({}).decision_weights is None
    assert "equal-prior" in rule.record()["text"] and rule.record()["rule"] == "balanced"


def test_the_most_probable_rule_drops_the_decision_weights_wherever_it_is_read():
    from bottleneck.stats.calibration import DecisionRule

    cal = Calibration.from_record(CALIBRATED["calibration"])
    assert DecisionRule.chosen("balanced", cal).decision_weights == (7.389, 0.368)
    assert DecisionRule.chosen("most-probable", cal).decision_weights is None
    assert DecisionRule.chosen("balanced", None).decision_weights is None  # nothing calibrated: argmax either way
    served = DecisionRule.of(CALIBRATED | {"decision_rule": "most-probable"})  # config.json or labels.json
    assert served.rule == "most-probable" and served.decision_weights is None and served.calibrated
    proba = np.array([[0.8, 0.2], [0.1, 0.9]])
    np.testing.assert_array_equal(decide(proba, served.decision_weights), [0, 1])  # the most probable
    np.testing.assert_array_equal(decide(proba, DecisionRule.of(CALIBRATED).decision_weights), [0, 0])


def test_an_unknown_decision_rule_is_refused_in_one_line():
    from bottleneck.errors import InputError
    from bottleneck.stats.calibration import DecisionRule

    with pytest.raises(InputError, match=r"decision_rule' of the run's config\.json should be balanced or "
                                         r"most-probable; received 'argmax'"):
        DecisionRule.of({"decision_rule": "argmax"})


def test_calibration_in_log_space_keeps_apart_what_probabilities_round_to_one():
    cal = Calibration(0.05, (0.0, 0.0), (1.0, 1.0))  # T at its lower bound: logits x 20
    logp = np.log([[0.999, 0.001], [0.9999, 0.0001]])
    assert (cal.apply(np.exp(logp))[:, 0] == 1.0).all()  # both calibrated probabilities are exactly 1.0
    out = cal.apply_log(logp)
    assert out[0, 0] < out[1, 0] < 0 and out[0, 1] > out[1, 1]  # their logs still rank the rows
    np.testing.assert_allclose(cal.undo_log(out), logp, rtol=1e-9)
