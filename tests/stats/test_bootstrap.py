"""The lesion bootstrap: weighted statistics equal resamples drawn by hand, intervals resample lesions (not images),
the headline metrics' intervals, and a wide flagged interval for a figure resting on one lesion."""

from __future__ import annotations

import numpy as np
import pytest

from bottleneck.stats.bootstrap import bootstrap, metric_intervals, ratio, resample_weights, weighted_auc
from bottleneck.stats.calibration import softmax
from bottleneck.stats.clinical import binary_stats, binary_support
from bottleneck.stats.metrics import compute_metrics, decide
from bottleneck.stats.units import resampling_units


def test_resampling_units_are_groups_or_the_image_itself():
    units = resampling_units(np.array(["a", "b", "a", "", ""], dtype=object))
    assert units[0] == units[2] and len({units[1], units[3], units[4], units[0]}) == 4


def test_weighted_statistics_equal_the_same_resample_drawn_by_hand():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    score = np.round(rng.random(40), 1)  # ties included
    pred = score > 0.5
    units = resampling_units(np.array([f"L{i // 2}" for i in range(40)], dtype=object))
    w = next(resample_weights(units, 5, seed=1))
    recall, auc = ratio((y == 1) & pred, y == 1)(w), weighted_auc(y == 1, score)(w)
    for b in range(5):
        rows = np.repeat(np.arange(40), w[b].astype(int))  # the resample as a list of rows, duplicates repeated
        assert len(rows) == 40 and set(np.bincount(units[rows])) <= {0, 2, 4, 6, 8, 10, 12}  # whole lesions
        yb = y[rows]
        assert recall[b] == pytest.approx(pred[rows][yb == 1].mean())
        assert auc[b] == pytest.approx(roc_auc_score(yb, score[rows]))


def test_intervals_resample_lesions_not_images():
    """Four identical images per lesion carry the evidence of one: resampling lesions gives the interval of the
    lesions alone, resampling images pretends to four times the evidence (a narrower interval)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    hit = rng.random(60) < 0.8
    rep = np.repeat(np.arange(60), 4)
    stat = {"recall": ratio(hit[rep] & (y[rep] == 1), y[rep] == 1)}
    value = {"recall": float(hit[y == 1].mean())}
    by_lesion = bootstrap(stat, value, rep, seed=0)["recall"]
    by_image = bootstrap(stat, value, np.arange(240), seed=0)["recall"]
    alone = bootstrap({"recall": ratio(hit & (y == 1), y == 1)}, value, np.arange(60), seed=0)["recall"]
    assert by_lesion["lower"] <= value["recall"] <= by_lesion["upper"] and by_lesion["resamples"] == 1000
    width = {k: r["upper"] - r["lower"] for k, r in (("lesion", by_lesion), ("image", by_image), ("alone", alone))}
    assert width["lesion"] == pytest.approx(width["alone"], rel=0.25)
    assert width["image"] < 0.75 * width["lesion"]


def test_metric_intervals_cover_every_headline_metric_and_are_reproducible():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 30)
    proba = softmax(rng.normal(0, 1, (90, 3)) + 2 * np.eye(3)[y])
    names = ["bcc", "mel", "nv"]
    m = compute_metrics(y, proba, names, positive=1)
    units = resampling_units(np.array([f"L{i // 3}" for i in range(90)], dtype=object))
    a = metric_intervals(y, proba, decide(proba), names, m, units, seed=7, positive=1)
    b = metric_intervals(y, proba, decide(proba), names, m, units, seed=7, positive=1)
    assert a == b
    for key in ("balanced_accuracy", "roc_auc_macro", "sensitivity", "specificity"):
        assert a[key]["lower"] <= a[key]["value"] <= a[key]["upper"], key
    assert a["balanced_accuracy"]["value"] == m["balanced_accuracy"]
    assert a["sensitivity"]["value"] == m["positive"]["sensitivity"] == m["per_class"]["mel"]["recall"]
    assert set(a["recall"]) == set(names)


def test_a_figure_resting_on_one_lesion_has_a_wide_flagged_interval():
    """Resampling one lesion cannot show its uncertainty (every resample agrees); the exact binomial interval on one
    lesion can: 2 of 2 images of one melanoma detected is 1.000 (0.025-1.000), flagged, not 1.000 (1.000-1.000)."""
    y = np.array([1, 1, 0, 0, 0, 0])
    flagged = np.array([True, True, False, True, False, False])
    units = resampling_units(np.array(["A", "A", "B", "C", "D", "E"], dtype=object))  # every positive: lesion A
    found = bootstrap(binary_stats(y, flagged, 1), None, units, seed=0,
                      support=binary_support(y, flagged, 1, units))
    sens = found["sensitivity"]
    assert sens["value"] == 1.0 and sens["lower"] == pytest.approx(0.025) and sens["upper"] == 1.0
    assert sens["few"] and sens["lesions"] == 1 and sens["n_eff"] == 1
    assert found["specificity"]["lesions"] == 4 and 0 < found["specificity"]["lower"] < 0.75
