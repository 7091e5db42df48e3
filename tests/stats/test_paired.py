"""stats/paired.py: DeLong's fast algorithm against the O(n^2) definition, midranks, the bootstrap p-value, Holm's
adjustment and the paired lesion bootstrap of a difference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from bottleneck.stats.paired import (
    Scored,
    bootstrap_p,
    delong,
    holm,
    midranks,
    paired_bootstrap,
    structural_components,
)


def delong_by_pairs(positive, score_a, score_b) -> dict:
    """DeLong, DeLong and Clarke-Pearson (1988) as written: psi(x, y) = 1, 1/2, 0 over every positive-negative pair;
    V10 per positive and V01 per negative are its row and column means; S10, S01 their sample covariances."""
    pos = np.asarray(positive, dtype=bool)
    m, n = pos.sum(), (~pos).sum()
    v10, v01, aucs = [], [], []
    for s in (np.asarray(score_a, float), np.asarray(score_b, float)):
        x, y = s[pos][:, None], s[~pos][None, :]
        psi = (x > y) + 0.5 * (x == y)  # (m, n)
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10 = np.cov(np.stack(v10))
    s01 = np.cov(np.stack(v01))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (aucs[1] - aucs[0]) / np.sqrt(var)
    return {"auc_a": aucs[0], "auc_b": aucs[1], "z": z, "p": 2 * norm.sf(abs(z)), "se": np.sqrt(var)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_fast_algorithm_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    n = 150
    positive = rng.random(n) < 0.3
    a = positive * 0.8 + rng.normal(0, 1, n)
    b = positive * 1.2 + 0.5 * a + rng.normal(0, 1, n)  # correlated with a, as two heads of one split are
    a, b = np.round(a, 1), np.round(b, 1)  # ties, which psi counts as 1/2
    got, want = delong(positive, a, b), delong_by_pairs(positive, a, b)
    for key in ("auc_a", "auc_b", "z", "p", "se"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert got["auc_a"] == pytest.approx(roc_auc_score(positive, a))
    assert got["difference"] == pytest.approx(want["auc_b"] - want["auc_a"])


def test_structural_components_average_to_the_auc():
    rng = np.random.default_rng(3)
    positive = np.r_[np.ones(7, bool), np.zeros(11, bool)]
    scores = rng.integers(0, 5, size=(3, 18)).astype(float)  # many ties
    aucs, v10, v01 = structural_components(positive, scores)
    assert v10.shape == (3, 7) and v01.shape == (3, 11)
    for k in range(3):
        assert aucs[k] == pytest.approx(roc_auc_score(positive, scores[k]))
        assert v10[k].mean() == pytest.approx(aucs[k]) and v01[k].mean() == pytest.approx(aucs[k])


def test_midranks_share_the_mean_rank_of_ties():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert midranks(np.array([0.5, 0.5])).tolist() == [1.5, 1.5]


def test_delong_of_identical_scores_is_p_1_and_undefined_without_two_of_each_class():
    positive = np.array([1, 1, 0, 0, 0], bool)
    s = np.array([0.9, 0.4, 0.5, 0.1, 0.2])
    same = delong(positive, s, s)
    assert same["difference"] == 0 and same["z"] is None and same["p"] == 1.0
    assert delong(np.array([1, 0, 0], bool), np.arange(3.0), np.arange(3.0)[::-1]) is None


def test_bootstrap_p_is_two_sided_and_floored_at_one_over_resamples():
    assert bootstrap_p(np.full(2000, 0.1)) == pytest.approx(1 / 2000)  # no resample at or below 0
    assert bootstrap_p(np.r_[np.full(950, 0.1), np.full(50, -0.1)]) == pytest.approx(0.1)
    assert bootstrap_p(np.zeros(100)) == 1.0  # no difference at all
    assert bootstrap_p(np.array([np.nan, np.nan])) is None


def test_holm_steps_down_and_leaves_untested_out_of_the_family():
    got = holm([0.01, 0.04, None, 0.03, 0.005])
    # sorted 0.005 x4, 0.01 x3, 0.03 x2, 0.04 x1 (kept monotone: 0.06)
    assert got[2] is None
    assert [got[i] for i in (0, 1, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_paired_bootstrap_of_a_run_against_itself_is_zero_and_of_two_runs_matches_the_point_values():
    rng = np.random.default_rng(4)
    n = 120
    y = rng.integers(0, 3, n)
    units = np.repeat(np.arange(n // 2), 2)  # lesions of two images
    score_a = (y == 1) + rng.normal(0, 1, n)
    score_b = (y == 1) * 2 + rng.normal(0, 1, n)
    a = Scored(np.where(rng.random(n) < 0.6, y, (y + 1) % 3), score_a, score_a > 0.5)
    b = Scored(np.where(rng.random(n) < 0.8, y, (y + 1) % 3), score_b, score_b > 1.0)
    same, diff = paired_bootstrap(y, 1, [a, a, b], [(0, 1), (0, 2)], units, seed=0, resamples=400)
    for m in ("balanced_accuracy", "auc", "sensitivity", "specificity"):
        assert same[m]["difference"] == 0 and same[m]["lower"] == 0 == same[m]["upper"]
        assert same[m]["p_bootstrap"] == 1.0
    bal = [np.mean([(s.pred[y == k] == k).mean() for k in range(3)]) for s in (a, b)]
    assert diff["balanced_accuracy"]["difference"] == pytest.approx(bal[1] - bal[0])
    assert diff["auc"]["difference"] == pytest.approx(roc_auc_score(y == 1, score_b) - roc_auc_score(y == 1, score_a))
    sens = [s.flagged[y == 1].mean() for s in (a, b)]
    assert diff["sensitivity"]["difference"] == pytest.approx(sens[1] - sens[0])
    d = diff["auc"]
    assert d["lower"] <= d["difference"] <= d["upper"] and d["resamples"] == 400
