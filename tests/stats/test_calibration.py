"""Calibration: ECE and Brier score of known cases, temperature scaling that recovers a known overconfidence (with
and without the class-weight prior), and the calibration folded into a real head equal to the numpy one."""

from __future__ import annotations

import numpy as np
import pytest

from bottleneck.stats.calibration import Calibration, brier_score, expected_calibration_error, softmax
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
