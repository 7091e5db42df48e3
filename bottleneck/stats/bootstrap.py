"""The lesion bootstrap: intervals of statistics of weighted rows, for a thousand resamples at once.

A resample draws whole resampling units (the cache's group ids, `units.resampling_units`; an image without one is
its own unit) and becomes a row of weights, how often each row's unit was drawn. Images of one lesion are not
independent evidence: resampling images would make the intervals too narrow. The statistics say what they are
(`Ratio`, `AUC`, `Mean`), so that each gets the interval that covers (`intervals.py`): a proportion the exact
binomial interval on its effective sample size (the design effect measured by these resamples), the others the
percentile interval, bounded at the edges. Pure numpy, like metrics.py.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from .intervals import BOUND, FEW_LESIONS, LEVEL, PERCENTILE, PROPORTION, percentile_interval, proportion_interval

RESAMPLES = 1000  # bootstrap resamples of every interval
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


class Ratio:
    """A proportion of weighted rows: (weights of rows in `num`) / (weights of rows in `den`); NaN when empty.
    `den` says which rows (so which lesions) the proportion rests on."""

    def __init__(self, num: np.ndarray, den: np.ndarray):
        self.num, self.den = num.astype(np.float64), den.astype(np.float64)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        d = w @ self.den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, (w @ self.num) / np.where(d > 0, d, 1), np.nan)

    def lesions(self, units: np.ndarray) -> int:
        return units_in(units, self.den > 0)


class AUC:
    """ROC AUC of weighted rows (ties count half), for many weightings at once; NaN without both classes."""

    def __init__(self, positive: np.ndarray, score: np.ndarray):
        self.positive = np.asarray(positive, dtype=bool)
        self.order = np.argsort(score, kind="stable")
        s = score[self.order]
        self.starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # first row of each run of tied scores
        self.pos = self.positive[self.order].astype(np.float64)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        wo = w[:, self.order]
        p = np.add.reduceat(wo * self.pos, self.starts, axis=1)  # (b, ties) weight of positives per tied score
        n = np.add.reduceat(wo * (1 - self.pos), self.starts, axis=1)
        below = np.cumsum(n, axis=1) - n  # negatives scored strictly lower
        den = p.sum(1) * n.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (p * (below + 0.5 * n)).sum(1) / np.where(den > 0, den, 1), np.nan)

    def lesions(self, units: np.ndarray) -> int:
        """The fewer of the positive and the negative lesions: an AUC rests on both."""
        return min(units_in(units, self.positive), units_in(units, ~self.positive))


class Mean:
    """The mean of several statistics over those defined in each resample (balanced accuracy, macro AUC)."""

    def __init__(self, parts: list[Callable]):
        self.parts = list(parts)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with none defined: NaN
            return np.nanmean(np.stack([f(w) for f in self.parts]), axis=0)

    def lesions(self, units: np.ndarray) -> int:
        """The fewest lesions any of its parts rests on (a mean is as rough as its roughest part)."""
        return min((lesions_of(f, units) for f in self.parts), default=0)


def ratio(num: np.ndarray, den: np.ndarray) -> Ratio:
    return Ratio(num, den)


def weighted_auc(positive: np.ndarray, score: np.ndarray) -> AUC:
    return AUC(positive, score)


def mean_of(stats: list[Callable]) -> Mean:
    return Mean(stats)


def lesions_of(stat: Callable, units: np.ndarray, given: int | None = None) -> int:
    """How many lesions a statistic rests on: its own count where it knows its rows, else `given` (else all)."""
    if hasattr(stat, "lesions"):
        return stat.lesions(units)
    return given if given is not None else (int(units.max()) + 1 if len(units) else 0)


def point_values(stats: dict[str, Callable], n: int) -> dict[str, float | None]:
    """Each statistic of the rows as drawn (every weight 1); None where it is undefined."""
    drawn = {k: float(f(np.ones((1, n)))[0]) for k, f in stats.items()}
    return {k: None if math.isnan(v) else v for k, v in drawn.items()}


def bootstrap(stats: dict[str, Callable], values: dict[str, float | None] | None, units: np.ndarray, seed: int,
              resamples: int = RESAMPLES, level: float = LEVEL, support: dict[str, int] | None = None
              ) -> dict[str, dict | None]:
    """The interval of each statistic: {name: {value, lower, upper, method, lesions, few, resamples, ...}}
    (None: no value); see `interval_of`.

    `stats` map weights (b, N) to (b,) values; `values` are the point estimates (None: the statistics of the
    rows as drawn, `point_values`). "resamples" counts those in which the statistic was defined (e.g. a class was
    drawn at all). `support`: how many lesions a statistic that does not know its rows rests on (a `Ratio`,
    `AUC` or `Mean` counts its own)."""
    values = point_values(stats, len(units)) if values is None else values
    names = [k for k in stats if values.get(k) is not None]
    draws = {k: [] for k in names}
    if names and len(units):
        for w in resample_weights(units, resamples, seed):
            for k in names:
                draws[k].append(stats[k](w))
    out = {}
    for k in stats:
        if k not in draws:
            out[k] = None
            continue
        d = np.concatenate(draws[k]) if draws[k] else np.zeros(0)
        d = d[np.isfinite(d)]
        out[k] = {"value": float(values[k]), **interval_of(stats[k], float(values[k]), d, units, level,
                                                           (support or {}).get(k)), "resamples": int(len(d))}
    return out


def interval_of(stat: Callable, value: float, draws: np.ndarray, units: np.ndarray, level: float = LEVEL,
                lesions: int | None = None) -> dict:
    """A proportion (`Ratio`): Clopper-Pearson on its effective sample size, the design effect measured by the
    resamples `draws` (`intervals.proportion_interval`); anything else: the percentile interval, bounded at the
    edges (`intervals.percentile_interval`). Each flagged `few` under FEW_LESIONS lesions."""
    if isinstance(stat, Ratio):
        rows = stat.den > 0
        sizes = np.bincount(units[rows], weights=stat.den[rows])
        return proportion_interval(value, draws, sizes[sizes > 0], level)
    return percentile_interval(value, draws, lesions_of(stat, units, lesions), level)


def units_in(units: np.ndarray, rows: np.ndarray) -> int:
    """How many resampling units the rows of boolean mask `rows` belong to."""
    return int(len(np.unique(units[rows])))


def bootstrap_record(units: np.ndarray, groups: np.ndarray, seed: int, resamples: int = RESAMPLES) -> dict:
    """How the intervals of metrics.json were made (each interval also names its own `method`)."""
    grouped = bool(len(groups)) and any(g for g in groups)
    return {"resamples": resamples, "seed": seed, "level": LEVEL,
            "method": {"proportions": PROPORTION, "others": PERCENTILE, "others_at_an_edge": BOUND},
            "few_lesions": FEW_LESIONS,
            "unit": "lesion/patient (group id)" if grouped else "image (no group ids)",
            "units": int(units.max()) + 1 if len(units) else 0}


def metric_intervals(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, class_names: list[str],
                     metrics: dict, units: np.ndarray, seed: int, positive: int | None,
                     resamples: int = RESAMPLES) -> dict:
    """Intervals of the headline metrics of `metrics` (a compute_metrics dict of the same rows): balanced
    accuracy, macro AUC, per-class recall and the positive class's sensitivity and specificity (argmax); each
    record names its method and flags (`few`) a figure resting on fewer than FEW_LESIONS lesions."""
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
    for n in class_names:
        stats[f"recall:{n}"] = recalls[n]
        values[f"recall:{n}"] = metrics["per_class"][n]["recall"] if metrics["per_class"][n]["support"] else None
    found = bootstrap(stats, values, units, seed, resamples)  # each statistic counts the lesions it rests on
    out = {k: v for k, v in found.items() if not k.startswith("recall:")}
    out["recall"] = {n: found[f"recall:{n}"] for n in class_names}
    return out
