"""Two or more classifiers scored on the same images, compared as pairs: what `bottleneck compare` reports.

Two intervals that overlap are not a test of a difference: the runs were scored on the same lesions, so most of
each run's sampling noise is shared, and the difference B - A varies far less than either figure does. The paired
lesion bootstrap draws whole lesions once per resample and scores every run on that same draw (`paired_bootstrap`),
so each resample gives one difference per pair; its percentile interval and a two-sided bootstrap p-value
(2 x the smaller share of differences on either side of 0) say how far the difference stands from noise.

DeLong's test for two correlated ROC AUCs (`delong`, DeLong, DeLong and Clarke-Pearson 1988) is the standard
second opinion on an AUC difference, by the fast algorithm of Sun and Xu (2014): midranks instead of all pairwise
comparisons, the structural components V10 (one per positive image) and V01 (one per negative), their 2 x 2
covariance and z = (AUC_B - AUC_A) / sqrt(var). It treats images as independent: with several images per lesion it
is too sure of itself, which is why the bootstrap over lesions is the headline test and DeLong the check.

With k runs there are k(k-1)/2 pairs and several figures each; `holm` adjusts the p-values for that many tests
(Holm 1979: never less powerful than Bonferroni, and controls the chance of any false claim at 5%).
Pure numpy (and scipy.special.ndtr), like the rest of the package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bootstrap import mean_of, ratio, resample_weights, weighted_auc
from .intervals import LEVEL

PAIRED_RESAMPLES = 2000  # a p-value near 0.05 needs more resamples than an interval does
ALPHA = 0.05  # what "survives" means after the Holm adjustment
PAIRED_METRICS = ("balanced_accuracy", "auc", "sensitivity", "specificity")  # the figures compared, in table order


@dataclass(frozen=True)
class Scored:
    """One run's decisions on the compared rows (N,): predicted class index, the positive class's one-vs-rest score
    (`metrics.ovr_scores`) and whether its operating point flags the row as positive."""

    pred: np.ndarray  # (N,) int
    score: np.ndarray  # (N,) float64
    flagged: np.ndarray  # (N,) bool


def statistics(y: np.ndarray, positive: int, run: Scored) -> dict[str, Callable]:
    """The compared figures of one run as statistics of row weights (b, N) -> (b,) (`bootstrap.py`): balanced
    accuracy (mean recall over the classes present), AUC of the positive class, sensitivity and specificity."""
    present = list(np.unique(y))
    is_pos = y == positive
    return {"balanced_accuracy": mean_of([ratio((y == k) & (run.pred == k), y == k) for k in present]),
            "auc": weighted_auc(is_pos, run.score),
            "sensitivity": ratio(run.flagged & is_pos, is_pos),
            "specificity": ratio(~run.flagged & ~is_pos, ~is_pos)}


def bootstrap_p(draws: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of a difference from its resampled values: 2 x min(share <= 0, share >= 0), at
    most 1 and at least 1 / resamples (no resample on the other side of 0 says p < 1/resamples, not p = 0)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return None
    p = 2 * min(float((d <= 0).mean()), float((d >= 0).mean()))
    return float(min(1.0, max(p, 1.0 / len(d))))


def run_draws(stats: list[dict[str, Callable]], units: np.ndarray, seed: int,
              resamples: int = PAIRED_RESAMPLES) -> list[dict[str, np.ndarray]]:
    """Each run's statistics on the same lesion resamples: [{figure: (resamples,) values}] in the order of
    `stats`; NaN where a resample leaves a figure undefined (no positive lesion drawn)."""
    draws = [{k: [] for k in s} for s in stats]
    if len(units):
        for w in resample_weights(units, resamples, seed):  # one block of draws, shared by every run
            for run, s in zip(draws, stats):
                for k, f in s.items():
                    run[k].append(f(w))
    return [{k: np.concatenate(v) if v else np.zeros(0) for k, v in run.items()} for run in draws]


def point(stat: Callable, n: int) -> float | None:
    """A statistic of the rows as drawn (every weight 1); None where undefined."""
    v = float(stat(np.ones((1, n)))[0])
    return None if np.isnan(v) else v


def difference(value_a: float | None, value_b: float | None, draws_a: np.ndarray, draws_b: np.ndarray,
               level: float = LEVEL) -> dict:
    """The paired difference B - A: point estimate, percentile interval and bootstrap p over the resamples in
    which both figures are defined; None values where either figure is undefined on the rows."""
    if value_a is None or value_b is None:
        return {"a": value_a, "b": value_b, "difference": None, "lower": None, "upper": None, "p_bootstrap": None,
                "resamples": 0}
    d = draws_b - draws_a
    d = d[np.isfinite(d)]
    tail = (1 - level) / 2 * 100
    lo, hi = (float(x) for x in np.percentile(d, [tail, 100 - tail])) if len(d) else (None, None)
    return {"a": value_a, "b": value_b, "difference": value_b - value_a, "lower": lo, "upper": hi,
            "p_bootstrap": bootstrap_p(d), "resamples": int(len(d))}


def paired_bootstrap(y: np.ndarray, positive: int, runs: list[Scored], pairs: list[tuple[int, int]],
                     units: np.ndarray, seed: int, resamples: int = PAIRED_RESAMPLES) -> list[dict[str, dict]]:
    """{figure: `difference`} of each pair (i, j) of `runs` (B = runs[j] minus A = runs[i]), every run scored on
    the same lesion resamples of the rows (y, units)."""
    stats = [statistics(y, positive, r) for r in runs]
    values = [{k: point(f, len(y)) for k, f in s.items()} for s in stats]
    draws = run_draws(stats, units, seed, resamples)
    return [{k: difference(values[i][k], values[j][k], draws[i][k], draws[j][k]) for k in PAIRED_METRICS}
            for i, j in pairs]


# --- DeLong's test --------------------------------------------------------------------------------------------

def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of the ranks they span (as a Mann-Whitney count needs)."""
    _, inverse, counts = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last rank each distinct value spans
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def structural_components(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aucs (k,), V10 (k, m), V01 (k, n)) of k score rows (k, N) against boolean `positive` (N,) with m positives
    and n negatives, by midranks (Sun and Xu 2014): V10 of a positive image is the share of negatives it outranks
    (ties half), V01 of a negative image the share of positives that outrank it; each AUC is the mean of either."""
    pos = np.asarray(positive, dtype=bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(pos.sum()), int((~pos).sum())
    x, yneg = s[:, pos], s[:, ~pos]  # (k, m), (k, n)
    tx = np.stack([midranks(r) for r in x])  # ranks among the positives
    ty = np.stack([midranks(r) for r in yneg])  # among the negatives
    tz = np.stack([midranks(r) for r in np.concatenate([x, yneg], axis=1)])  # among all
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n  # negatives below each positive
    v01 = 1.0 - (tz[:, m:] - ty) / m  # positives above each negative
    return aucs, v10, v01


def delong(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict | None:
    """DeLong's test of AUC_B - AUC_A for two scores of the same images: {auc_a, auc_b, difference, se, z, p}
    (two-sided, normal); None with fewer than two positives or negatives. Where the difference has no variance (two
    scores that rank every pair alike) z is undefined (None), and p is 1 for equal AUCs, else undefined."""
    from scipy.special import ndtr

    pos = np.asarray(positive, dtype=bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:  # a covariance needs two of each
        return None
    aucs, v10, v01 = structural_components(pos, np.stack([score_a, score_b]))
    cov = np.cov(v10) / m + np.cov(v01) / n  # (2, 2): S10 / m + S01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[1] - aucs[0])
    if not var > 1e-15:
        return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": 0.0, "z": None,
                "p": 1.0 if abs(diff) < 1e-12 else None}
    z = diff / np.sqrt(var)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": float(np.sqrt(var)),
            "z": float(z), "p": float(min(1.0, 2 * ndtr(-abs(z))))}


# --- many comparisons -----------------------------------------------------------------------------------------

def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: no test, left out of the family's size):
    the i-th smallest of m is multiplied by m - i + 1, kept monotone, capped at 1. A difference survives at level
    alpha when its adjusted p is at most alpha."""
    given = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    m, running = len(given), 0.0
    for rank, (p, i) in enumerate(sorted(given)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
