"""The lesion bootstrap: percentile intervals of statistics of weighted rows, for a thousand resamples at once.

A resample draws whole resampling units (the cache's group ids, `units.resampling_units`; an image without one is
its own unit) and becomes a row of weights, how often each row's unit was drawn. Images of one lesion are not
independent evidence: resampling images would make the intervals too narrow. Pure numpy, like metrics.py.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

RESAMPLES = 1000  # bootstrap resamples of every interval
LEVEL = 0.95  # two-sided percentile intervals
_CELLS = 2_000_000  # resamples x rows of one weight block (16 MB of float64)


def resample_weights(units: np.ndarray, resamples: int, seed: int):
    """Blocks of (b, N) row weights, one row per resample: how often each row's unit was drawn."""
    rng = np.random.default_rng(seed)
    n_units = int(units.max()) + 1 if len(units) else 0
    block = max(1, _CELLS // max(1, len(units)))
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=b)  # (b, units)
        yield counts[:, units].astype(np.float64)


def ratio(num: np.ndarray, den: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic of weighted rows: (weights of rows in `num`) / (weights of rows in `den`); NaN when empty."""
    num, den = num.astype(np.float64), den.astype(np.float64)

    def stat(w: np.ndarray) -> np.ndarray:
        d = w @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, (w @ num) / np.where(d > 0, d, 1), np.nan)

    return stat


def weighted_auc(positive: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """ROC AUC of weighted rows (ties count half), for many weightings at once; NaN without both classes."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # first row of each run of tied scores
    pos = positive[order].astype(np.float64)

    def stat(w: np.ndarray) -> np.ndarray:
        wo = w[:, order]
        p = np.add.reduceat(wo * pos, starts, axis=1)  # (b, ties) weight of positives per tied score
        n = np.add.reduceat(wo * (1 - pos), starts, axis=1)
        below = np.cumsum(n, axis=1) - n  # negatives scored strictly lower
        den = p.sum(1) * n.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (p * (below + 0.5 * n)).sum(1) / np.where(den > 0, den, 1), np.nan)

    return stat


def mean_of(stats: list[Callable]) -> Callable[[np.ndarray], np.ndarray]:
    """The mean of several statistics over those defined in each resample (balanced accuracy, macro AUC)."""
    def stat(w: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with none defined: NaN
            return np.nanmean(np.stack([f(w) for f in stats]), axis=0)

    return stat


def point_values(stats: dict[str, Callable], n: int) -> dict[str, float | None]:
    """Each statistic of the rows as drawn (every weight 1); None where it is undefined."""
    drawn = {k: float(f(np.ones((1, n)))[0]) for k, f in stats.items()}
    return {k: None if math.isnan(v) else v for k, v in drawn.items()}


def bootstrap(stats: dict[str, Callable], values: dict[str, float | None] | None, units: np.ndarray, seed: int,
              resamples: int = RESAMPLES, level: float = LEVEL, support: dict[str, int] | None = None
              ) -> dict[str, dict | None]:
    """Percentile intervals of each statistic: {name: {value, lower, upper, resamples}} (None: no value).

    `stats` map weights (b, N) to (b,) values; `values` are the point estimates (None: the statistics of the
    rows as drawn, `point_values`).
    "resamples" counts those in which the statistic was defined (e.g. a class was drawn at all). `support`:
    how many units the statistic rests on (e.g. lesions of the positive class); under 2, resampling cannot show
    its uncertainty (one lesion gives a zero-width interval), so lower and upper are None."""
    values = point_values(stats, len(units)) if values is None else values
    names = [k for k in stats if values.get(k) is not None]
    draws = {k: [] for k in names}
    if names and len(units):
        for w in resample_weights(units, resamples, seed):
            for k in names:
                draws[k].append(stats[k](w))
    out = {}
    tail = (1 - level) / 2 * 100
    for k in stats:
        if k not in draws:
            out[k] = None
            continue
        d = np.concatenate(draws[k]) if draws[k] else np.zeros(0)
        d = d[np.isfinite(d)]
        lo, hi = (np.percentile(d, [tail, 100 - tail]) if len(d) else (np.nan, np.nan))
        if (support or {}).get(k, 2) < 2:
            lo = hi = np.nan
        out[k] = {"value": float(values[k]), "lower": None if np.isnan(lo) else float(lo),
                  "upper": None if np.isnan(hi) else float(hi), "resamples": int(len(d))}
    return out


def units_in(units: np.ndarray, rows: np.ndarray) -> int:
    """How many resampling units the rows of boolean mask `rows` belong to."""
    return int(len(np.unique(units[rows])))


def bootstrap_record(units: np.ndarray, groups: np.ndarray, seed: int, resamples: int = RESAMPLES) -> dict:
    grouped = bool(len(groups)) and any(g for g in groups)
    return {"resamples": resamples, "seed": seed, "level": LEVEL, "method": "percentile",
            "unit": "lesion/patient (group id)" if grouped else "image (no group ids)",
            "units": int(units.max()) + 1 if len(units) else 0}


def metric_intervals(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, class_names: list[str],
                     metrics: dict, units: np.ndarray, seed: int, positive: int | None,
                     resamples: int = RESAMPLES) -> dict:
    """Intervals of the headline metrics of `metrics` (a compute_metrics dict of the same rows): balanced
    accuracy, macro AUC, per-class recall and the positive class's sensitivity and specificity (argmax)."""
    c = len(class_names)
    recalls = {n: ratio((y == k) & (pred == k), y == k) for k, n in enumerate(class_names)}
    present = [recalls[n] for k, n in enumerate(class_names) if (y == k).any()]
    stats = {"balanced_accuracy": mean_of(present)}
    values = {"balanced_accuracy": metrics["balanced_accuracy"]}
    aucs = {n: weighted_auc(y == k, proba[:, k]) for k, n in enumerate(class_names)
            if metrics["roc_auc_per_class"].get(n) is not None}
    if c == 2:
        stats["roc_auc_macro"] = aucs.get(class_names[1], mean_of([]))
    else:
        stats["roc_auc_macro"] = mean_of(list(aucs.values()))
    values["roc_auc_macro"] = metrics["roc_auc_macro"]
    if positive is not None:
        stats["sensitivity"] = recalls[class_names[positive]]
        stats["specificity"] = ratio((y != positive) & (pred != positive), y != positive)
        pos = metrics.get("positive") or {}
        values |= {"sensitivity": pos.get("sensitivity"), "specificity": pos.get("specificity")}
    support = {f"recall:{n}": units_in(units, y == k) for k, n in enumerate(class_names)}
    for n in class_names:
        stats[f"recall:{n}"] = recalls[n]
        values[f"recall:{n}"] = metrics["per_class"][n]["recall"] if metrics["per_class"][n]["support"] else None
    if positive is not None:
        support |= {"sensitivity": units_in(units, y == positive), "specificity": units_in(units, y != positive)}
    found = bootstrap(stats, values, units, seed, resamples, support=support)
    out = {k: v for k, v in found.items() if not k.startswith("recall:")}
    out["recall"] = {n: found[f"recall:{n}"] for n in class_names}
    return out
