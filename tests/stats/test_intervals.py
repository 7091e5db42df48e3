"""Intervals that cover: 11/11 and 5/5 are not certainty, no interval has zero width, a figure resting on fewer
than ten lesions is flagged, and images of one lesion that agree count for fewer than their number."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from bottleneck.stats.bootstrap import bootstrap, mean_of, metric_intervals, ratio, weighted_auc
from bottleneck.stats.calibration import softmax
from bottleneck.stats.intervals import (
    BOUND,
    PERCENTILE,
    PROPORTION,
    clopper_pearson,
    clustered_n,
    percentile_interval,
    proportion_interval,
    wilson,
)
from bottleneck.stats.metrics import compute_metrics, decide


def detected(n_lesions: int, hits: int, images_per_lesion: int = 1) -> dict:
    """The sensitivity interval of `hits` of `n_lesions` positive lesions detected, each with its images agreeing."""
    units = np.repeat(np.arange(n_lesions), images_per_lesion)
    hit = np.repeat(np.arange(n_lesions) < hits, images_per_lesion)
    return bootstrap({"sensitivity": ratio(hit, np.ones(len(units), dtype=bool))}, None, units, seed=0)["sensitivity"]


def test_all_detected_is_not_certainty():
    eleven, five = detected(11, 11), detected(5, 5)
    assert eleven["value"] == five["value"] == 1.0 and eleven["upper"] == five["upper"] == 1.0
    assert eleven["lower"] == pytest.approx(0.025 ** (1 / 11)) and eleven["lower"] < 0.75  # exact: 0.715
    assert five["lower"] == pytest.approx(0.025 ** (1 / 5)) and five["lower"] < 0.6  # 0.478
    assert eleven["method"] == five["method"] == PROPORTION and eleven["deff"] is None
    # 11 lesions of 3 agreeing images each are still 11 lesions, not 33 images
    assert detected(11, 11, images_per_lesion=3)["lower"] == pytest.approx(eleven["lower"])


def test_exact_and_score_intervals_match_their_formulas():
    lo, hi = clopper_pearson(7, 10)
    assert lo == pytest.approx(beta.ppf(0.025, 7, 4)) and hi == pytest.approx(beta.ppf(0.975, 8, 3))
    assert clopper_pearson(0, 8) == (0.0, pytest.approx(1 - 0.025 ** (1 / 8)))
    assert wilson(11, 11)[0] == pytest.approx(11 / (11 + 1.959964 ** 2))  # Wilson at 100%: n / (n + z^2)
    assert clustered_n(np.array([1, 1, 4])) == pytest.approx(36 / 18) and clustered_n(np.ones(7)) == 7


@pytest.mark.parametrize("case", ["none detected", "all detected", "one lesion", "perfect AUC", "AUC of 0",
                                  "perfect balanced accuracy", "tied scores", "all in one lesion"])
def test_no_interval_has_zero_width(case):
    y = np.r_[np.ones(6, bool), np.zeros(14, bool)]
    units = np.arange(20)
    stat = {"none detected": ratio(np.zeros(20, bool), y), "all detected": ratio(y, y),
            "one lesion": ratio(y[:1], y[:1]), "perfect AUC": weighted_auc(y, y * 1.0),
            "AUC of 0": weighted_auc(y, ~y * 1.0), "tied scores": weighted_auc(y, np.ones(20)),
            "perfect balanced accuracy": mean_of([ratio(y, y), ratio(~y, ~y)]),
            "all in one lesion": ratio(y, y)}[case]
    if case == "one lesion":
        units = units[:1]
    if case == "all in one lesion":
        units = np.zeros(20, dtype=int)
    r = bootstrap({"x": stat}, None, units, seed=0)["x"]
    assert r["lower"] <= r["value"] <= r["upper"] and r["upper"] - r["lower"] > 0.05, r


def test_edges_of_auc_and_balanced_accuracy_are_bounded_by_their_fewest_lesions():
    y = np.r_[np.ones(6, bool), np.zeros(30, bool)]
    r = bootstrap({"auc": weighted_auc(y, y * 1.0), "bal": mean_of([ratio(y, y), ratio(~y, ~y)])}, None,
                  np.arange(36), seed=0)
    for k in ("auc", "bal"):
        assert r[k]["method"] == BOUND and r[k]["lesions"] == 6 and r[k]["few"], k
        assert r[k]["lower"] == pytest.approx(0.025 ** (1 / 6)), k
    inside = percentile_interval(0.8, np.linspace(0.7, 0.9, 101), lesions=40)
    assert inside["method"] == PERCENTILE and not inside["few"] and inside["lower"] == pytest.approx(0.705)


def test_figures_resting_on_fewer_than_ten_lesions_are_flagged():
    assert detected(9, 8)["few"] and detected(9, 8)["lesions"] == 9
    assert not detected(10, 9)["few"] and detected(10, 9)["lesions"] == 10
    # through the headline metrics: 4 melanoma lesions (3 images each) against 20 lesions of each other class
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(12, int), np.full(60, 2)]
    proba = softmax(rng.normal(0, 1, (len(y), 3)) + 2 * np.eye(3)[y])
    units = np.r_[np.arange(20).repeat(3), 20 + np.arange(4).repeat(3), 24 + np.arange(20).repeat(3)]
    names = ["bcc", "mel", "nv"]
    m = compute_metrics(y, proba, names, positive=1)
    iv = metric_intervals(y, proba, decide(proba), names, m, units, seed=0, positive=1)
    assert iv["sensitivity"]["few"] and iv["sensitivity"]["lesions"] == 4
    assert iv["recall"]["mel"]["few"] and not iv["recall"]["nv"]["few"] and iv["recall"]["nv"]["lesions"] == 20
    assert not iv["specificity"]["few"] and iv["specificity"]["lesions"] == 40
    assert iv["balanced_accuracy"]["few"] and iv["roc_auc_macro"]["few"]  # they rest on the 4 melanomas too
    assert iv["balanced_accuracy"]["lesions"] == 4 and iv["balanced_accuracy"]["method"] == PERCENTILE


def test_agreeing_images_of_a_lesion_widen_the_interval_through_the_design_effect():
    """30 lesions of 4 images each, the images of a lesion all detected or all missed: 120 images carry the evidence
    of 30 lesions. Plain Wilson on the 120 images is too narrow; the design effect (about 4) brings the effective
    sample size back to about 30, and the interval to that of 30 single-image lesions."""
    lesion_hit = np.random.default_rng(2).random(30) < 0.8
    units = np.repeat(np.arange(30), 4)
    hit = lesion_hit[units]
    found = bootstrap({"s": ratio(hit, np.ones(120, bool))}, None, units, seed=0)["s"]
    p = hit.mean()
    plain = wilson(p * 120, 120)
    assert found["images"] == 120 and found["lesions"] == 30 and 3 < found["deff"] < 5.5
    assert 20 < found["n_eff"] < 40
    assert found["upper"] - found["lower"] > 1.6 * (plain[1] - plain[0])
    alone = bootstrap({"s": ratio(lesion_hit, np.ones(30, bool))}, None, np.arange(30), seed=0)["s"]
    assert found["upper"] - found["lower"] == pytest.approx(alone["upper"] - alone["lower"], rel=0.25)
    # independent images of the same lesions: no design effect to speak of
    rng = np.random.default_rng(3)
    loose = bootstrap({"s": ratio(rng.random(120) < 0.8, np.ones(120, bool))}, None, units, seed=0)["s"]
    assert loose["deff"] < 1.6 and loose["n_eff"] > 75


def test_a_proportion_interval_is_recomputable_from_its_record():
    """What metrics.json holds (value, n_eff) gives the interval again with the exact binomial formula."""
    units = np.repeat(np.arange(12), 2)
    hit = np.arange(24) % 5 != 0
    r = bootstrap({"s": ratio(hit, np.ones(24, bool))}, None, units, seed=4)["s"]
    assert (r["lower"], r["upper"]) == pytest.approx(clopper_pearson(r["value"] * r["n_eff"], r["n_eff"]), abs=1e-6)
    again = proportion_interval(r["value"], np.full(5, r["value"]), np.full(12, 2.0))  # no spread: deff unknown
    assert again["deff"] is None and again["n_eff"] == pytest.approx(12)
