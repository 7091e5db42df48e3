"""Figures a clinician can defend: bootstrap intervals over lesions, an operating point chosen on validation,
calibration (temperature scaling after undoing the class-weight prior shift), lesion-level and subgroup results.

    head probabilities (val, test) -> Calibration.fit (val) -> calibrated probabilities -> clinical_results (test)

Pure numpy/scipy/scikit-learn, like metrics.py: every figure recomputes from `predictions.csv` and config.json.
The bootstrap resamples lesions (the cache's group ids; an image without one is its own unit), because images
of one lesion are not independent evidence: resampling images would make the intervals too narrow.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import BottleneckWarning, InputError
from .metrics import compute_metrics, decide, melanoma_index
from .units import resampling_units

RESAMPLES = 1000  # bootstrap resamples of every interval
LEVEL = 0.95  # two-sided percentile intervals
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error
MIN_CLASS_IMAGES = 10  # a class with fewer images in a split is warned about
MIN_TEST_GROUPS = 30  # a test split with fewer lesions (groups) is warned about
TARGET_SENSITIVITY = 0.95  # default --target-sensitivity
_CELLS = 2_000_000  # resamples x rows of one weight block (16 MB of float64)

AGE_COLUMNS = ("age", "age_approx")
AGE_BANDS = ((30, "<30"), (50, "30-49"), (70, "50-69"), (math.inf, "70+"))  # (upper bound, exclusive; label)
# Columns a subgroup table is made of by default, where the cache has them (HAM10000 and ISIC names).
SUBGROUP_COLUMNS = ("sex", "age", "age_approx", "localization", "anatom_site_general",
                    "anatom_site_general_challenge", "dataset", "site")
UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------- bootstrap

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


# ---------------------------------------------------------------------------------------------- positive class

def positive_index(class_names: list[str], positive: str | None) -> int | None:
    """--positive CLASS (must be one of the run's classes), else the melanoma-named class, else None."""
    if positive is not None:
        if positive not in class_names:
            raise InputError(f"--positive {positive!r} is not a class of this run; pass one of "
                             f"{', '.join(class_names)}")
        return class_names.index(positive)
    return melanoma_index(class_names)


def binary_rates(y: np.ndarray, flagged: np.ndarray, positive: int) -> dict:
    """Sensitivity, specificity, PPV and NPV of flagging rows as the positive class (None when undefined)."""
    return point_values(binary_stats(y, flagged, positive), len(y))


def binary_support(y: np.ndarray, flagged: np.ndarray, positive: int, units: np.ndarray) -> dict[str, int]:
    is_pos = y == positive
    return {"sensitivity": units_in(units, is_pos), "specificity": units_in(units, ~is_pos),
            "ppv": units_in(units, flagged), "npv": units_in(units, ~flagged)}


def binary_stats(y: np.ndarray, flagged: np.ndarray, positive: int) -> dict[str, Callable]:
    is_pos = y == positive
    return {"sensitivity": ratio(flagged & is_pos, is_pos), "specificity": ratio(~flagged & ~is_pos, ~is_pos),
            "ppv": ratio(flagged & is_pos, flagged), "npv": ratio(~flagged & ~is_pos, ~flagged)}


def choose_threshold(y_val: np.ndarray, score_val: np.ndarray, positive: int, target: float) -> float | None:
    """The highest threshold on the positive class's probability that flags at least `target` of the
    validation positives (score >= threshold); None without validation positives."""
    s = np.sort(score_val[y_val == positive])[::-1]
    if len(s) == 0:
        return None
    return float(s[max(1, math.ceil(target * len(s) - 1e-9)) - 1])


def check_target(target: float) -> float:
    if not 0 < target <= 1:
        raise InputError(f"--target-sensitivity should be in (0, 1], e.g. 0.95; received {target}")
    return target


# ---------------------------------------------------------------------------------------------- calibration

def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_proba(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-30, None))


@dataclass(frozen=True)
class Calibration:
    """p_calibrated = softmax((log p_head + shift) / temperature), decisions argmax(p_calibrated * weights).

    shift = -log(class weight): a head trained with balanced class weights learned probabilities tilted towards
    rare classes; the shift undoes that tilt, so calibrated probabilities estimate the training prevalence. The
    decision weights, class weight ** (1 / temperature), make the decisions exactly the head's own argmax:
    calibration changes the probabilities, never the predicted class. Folded into the head's last layer
    (W/T, (b + shift)/T), it is exact: that layer's logits differ from log p_head by a per-row constant only."""

    temperature: float = 1.0
    shift: tuple[float, ...] = ()
    decision_weights: tuple[float, ...] = ()

    @classmethod
    def fit(cls, proba_val: np.ndarray, y_val: np.ndarray, class_weights: dict[int, float] | None) -> Calibration:
        from scipy.optimize import minimize_scalar

        c = proba_val.shape[1]
        w = np.array([class_weights[k] for k in range(c)]) if class_weights else np.ones(c)
        shift = -np.log(w)
        z = log_proba(proba_val) + shift
        rows = np.arange(len(y_val))

        def nll(log_t: float) -> float:
            s = z / math.exp(log_t)
            s = s - s.max(axis=1, keepdims=True)
            return float(-(s[rows, y_val] - np.log(np.exp(s).sum(axis=1))).mean())

        best = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                               options={"xatol": 1e-5})
        t = float(math.exp(best.x))
        return cls(t, tuple(float(v) for v in shift), tuple(float(v) for v in w ** (1.0 / t)))

    @classmethod
    def from_record(cls, record: dict | None) -> Calibration | None:
        """config.json's "calibration" block; None for a run without one (or with calibration off)."""
        if not record or not record.get("applied"):
            return None
        return cls(float(record["temperature"]), tuple(record["prior_shift"]), tuple(record["decision_weights"]))

    def apply(self, proba: np.ndarray) -> np.ndarray:
        return softmax((log_proba(proba) + np.array(self.shift)) / self.temperature)

    def undo(self, proba: np.ndarray) -> np.ndarray:
        """The head's own (uncalibrated) probabilities back from calibrated ones."""
        return softmax(self.temperature * log_proba(proba) - np.array(self.shift))

    def record(self) -> dict:
        return {"applied": True, "temperature": self.temperature, "prior_shift": list(self.shift),
                "decision_weights": list(self.decision_weights), "fitted_on": "val"}


@dataclass(frozen=True)
class DecisionRule:
    """How a run's probabilities become decisions when served (evaluate, predict, export)."""

    calibration: Calibration | None  # what the saved head has folded in (None: nothing)
    calibrated: bool  # whether the served probabilities keep it (False: --no-calibrate undid it)
    decision_weights: tuple[float, ...] | None
    positive: str | None
    threshold: float | None  # on the served probabilities of `positive`

    @classmethod
    def of(cls, config: dict, calibrate: bool = True) -> DecisionRule:
        """The rule of a run's config.json (or an export's labels.json); older runs: argmax, no threshold."""
        cal = Calibration.from_record(config.get("calibration"))
        op = config.get("operating_point") or {}
        kept = cal is not None and calibrate
        threshold = op.get("threshold") if kept or cal is None else op.get("threshold_uncalibrated")
        return cls(cal, kept, cal.decision_weights if kept else None, op.get("positive"), threshold)

    def record(self) -> dict:
        return {"calibrated": self.calibrated,
                "temperature": self.calibration.temperature if self.calibration else None,
                "decision_weights": list(self.decision_weights) if self.decision_weights else None,
                "positive": self.positive, "threshold": self.threshold}


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width confidence bin, weighted by the bin's share."""
    points = reliability(y, proba, bins)
    return float(sum(p["n"] * abs(p["accuracy"] - p["confidence"]) for p in points) / len(y)) if len(y) else 0.0


def brier_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot truth (0 best, 2 worst)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(((proba - onehot) ** 2).sum(axis=1).mean()) if len(y) else 0.0


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram's points: per non-empty bin, its mean confidence, accuracy and count."""
    conf = proba.max(axis=1)
    hit = proba.argmax(axis=1) == y
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # bin k holds (k/bins, (k+1)/bins]
    return [{"confidence": float(conf[which == k].mean()), "accuracy": float(hit[which == k].mean()),
             "n": int((which == k).sum())} for k in np.unique(which)]


def calibration_figures(y: np.ndarray, before: np.ndarray, after: np.ndarray | None) -> dict:
    out = {"bins": ECE_BINS, "ece_before": expected_calibration_error(y, before),
           "brier_before": brier_score(y, before), "reliability_before": reliability(y, before)}
    if after is not None:
        out |= {"ece_after": expected_calibration_error(y, after), "brier_after": brier_score(y, after),
                "reliability_after": reliability(y, after)}
    return out


# ---------------------------------------------------------------------------------------------- lesions, subgroups

def lesion_means(y: np.ndarray, proba: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, mean probabilities, lesions with several images) per lesion; an image without a group id is its
    own lesion. A lesion's label is its images' most frequent one (they agree in HAM10000)."""
    units = resampling_units(groups)
    n = int(units.max()) + 1
    counts = np.bincount(units, minlength=n)
    mean = np.zeros((n, proba.shape[1]))
    np.add.at(mean, units, proba)
    mean /= counts[:, None]
    votes = np.zeros((n, int(y.max()) + 1), dtype=np.int64)
    np.add.at(votes, (units, y), 1)
    return votes.argmax(axis=1), mean, int((counts > 1).sum())


def age_band(text: str) -> str:
    try:
        age = float(text)
    except ValueError:
        return UNKNOWN
    if not math.isfinite(age) or age < 0:
        return UNKNOWN
    return next(label for upper, label in AGE_BANDS if age < upper)


def subgroup_columns(meta: dict, chosen: tuple[str, ...] | None) -> list[str]:
    """The columns of the subgroup table: `chosen` (each must be in the cache), else the default ones present."""
    if chosen is None:
        return [c for c in SUBGROUP_COLUMNS if c in meta and any(str(v).strip() for v in meta[c])]
    missing = [c for c in chosen if c not in meta]
    if missing:
        have = ", ".join(meta) or "none (extract with --metadata CSV to store them)"
        raise InputError(f"--subgroups {','.join(missing)}: no such metadata column in the cache; its columns: {have}")
    return list(chosen)


def parse_subgroups(text: str | None) -> tuple[str, ...] | None:
    """--subgroups: None (default columns), "none" -> (), "sex,age" -> ("sex", "age")."""
    if text is None:
        return None
    if text.strip().casefold() == "none":
        return ()
    cols = tuple(c.strip() for c in text.split(",") if c.strip())
    if not cols:
        raise InputError("--subgroups should name metadata columns like sex,age, or be none")
    return cols


def subgroup_values(column: str, values: np.ndarray) -> np.ndarray:
    text = np.asarray([str(v).strip() for v in values], dtype=object)
    if column in AGE_COLUMNS:
        return np.asarray([age_band(v) for v in text], dtype=object)
    return np.where(text == "", UNKNOWN, text)


def _value_order(column: str, values) -> list[str]:
    if column in AGE_COLUMNS:
        return [label for _, label in AGE_BANDS if label in values] + ([UNKNOWN] if UNKNOWN in values else [])
    return sorted(values, key=lambda v: (v == UNKNOWN, v))


def subgroup_table(column: str, values: np.ndarray, y: np.ndarray, pred: np.ndarray, flagged: np.ndarray | None,
                   groups: np.ndarray, positive: int | None, seed: int, resamples: int = RESAMPLES) -> list[dict]:
    """Per value of `column` (age as bands; "" as unknown): images, lesions, positives, balanced accuracy and the
    positive class's sensitivity (at the operating point when `flagged` is given, else argmax), with intervals."""
    banded = subgroup_values(column, values)
    rows = []
    for value in _value_order(column, set(banded)):
        m = banded == value
        ym, pm, gm = y[m], pred[m], groups[m]
        units = resampling_units(gm)
        present = np.unique(ym)
        stats = {"balanced_accuracy": mean_of([ratio((ym == k) & (pm == k), ym == k) for k in present])}
        row = {"value": value, "images": int(m.sum()), "lesions": int(units.max()) + 1}
        if positive is not None:
            hit = flagged[m] if flagged is not None else pm == positive
            is_pos = ym == positive
            row["positives"] = int(is_pos.sum())
            stats["sensitivity"] = ratio(hit & is_pos, is_pos)
        row |= bootstrap(stats, None, units, seed, resamples,
                         support={"balanced_accuracy": int(units.max()) + 1,
                                  "sensitivity": units_in(units, ym == positive) if positive is not None else 0})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- warnings

def small_class_warnings(sizes: dict) -> list[str]:
    """A class with fewer than MIN_CLASS_IMAGES images in a split: its recall rests on a handful of cases."""
    out = []
    for split, s in sizes.items():
        few = {n: k for n, k in s["per_class"].items() if k < MIN_CLASS_IMAGES}
        if few:
            out.append(f"{split} split: " + ", ".join(f"{n} has {k} image{'s' * (k != 1)}" for n, k in few.items())
                       + f" (under {MIN_CLASS_IMAGES}): recall and intervals of such a class rest on a handful of "
                       "cases; extract more images of it or merge it into another class (--class-map)")
    return out


def few_groups_warning(n_units: int, grouped: bool) -> list[str]:
    if n_units >= MIN_TEST_GROUPS:
        return []
    what = "lesions (groups)" if grouped else "images"
    return [f"the test split has {n_units} {what} (under {MIN_TEST_GROUPS}): its figures and intervals are rough; "
            "use a larger test fraction (--test) or more data"]


def warn(messages: list[str]) -> None:
    for m in messages:
        warnings.warn(m, BottleneckWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- all of it

@dataclass(frozen=True)
class ClinicalOptions:
    positive: str | None = None  # --positive; None: the melanoma-named class when there is one
    target_sensitivity: float = TARGET_SENSITIVITY
    subgroups: tuple[str, ...] | None = None  # --subgroups; None: default columns present, (): none
    calibrate: bool = True  # --no-calibrate: False
    resamples: int = RESAMPLES


def operating_point(y_val, score_val, y_test, score_test, units, positive: int, class_names, target: float,
                    seed: int, resamples: int) -> dict:
    """The threshold chosen on validation for the target sensitivity, and what it gives on test."""
    name = class_names[positive]
    threshold = choose_threshold(y_val, score_val, positive, target)
    if threshold is None:
        return {"positive": name, "threshold": None, "target_sensitivity": target,
                "reason": f"the validation split has no {name} image to choose a threshold on"}
    flagged = score_test >= threshold
    val = binary_rates(y_val, score_val >= threshold, positive)
    test = bootstrap(binary_stats(y_test, flagged, positive), None, units, seed, resamples,
                     support=binary_support(y_test, flagged, positive, units))
    return {"positive": name, "threshold": threshold, "target_sensitivity": target, "chosen_on": "val",
            "val": {"sensitivity": val["sensitivity"], "specificity": val["specificity"],
                    "positives": int((y_val == positive).sum())},
            "test": test, "test_positives": int((y_test == positive).sum()), "test_images": int(len(y_test)),
            "test_prevalence": float((y_test == positive).mean()) if len(y_test) else None}


def clinical_results(class_names: list[str], y_test: np.ndarray, proba_test: np.ndarray, groups_test: np.ndarray,
                     meta_test: dict, metrics_test: dict, opts: ClinicalOptions, seed: int,
                     decision_weights=None, val: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Intervals, the operating point, lesion-level results and subgroups of the test split.

    proba_test: the probabilities the run reports (calibrated when calibration applies); val: (y_val, proba_val)
    in the same form, None when nothing was held out (a final fit on train+val): then no operating point."""
    class_names = list(class_names)
    positive = positive_index(class_names, opts.positive)
    units = resampling_units(groups_test)
    pred = decide(proba_test, decision_weights)
    out = {"bootstrap": bootstrap_record(units, groups_test, seed, opts.resamples),
           "positive": class_names[positive] if positive is not None else None}
    metrics_test["intervals"] = metric_intervals(y_test, proba_test, pred, class_names, metrics_test, units, seed,
                                                 positive, opts.resamples)
    flagged = None
    if positive is None:
        out["operating_point"] = {"positive": None, "threshold": None, "reason": "no class named mel/melanoma: "
                                  "pass --positive CLASS to report an operating point"}
    elif val is None:
        out["operating_point"] = {"positive": class_names[positive], "threshold": None,
                                  "reason": "trained on train+val: no held-out validation split to choose it on"}
    else:  # threshold_uncalibrated is added by the caller, who holds the head's own probabilities
        out["operating_point"] = operating_point(val[0], val[1][:, positive], y_test, proba_test[:, positive], units,
                                                 positive, class_names, opts.target_sensitivity, seed,
                                                 opts.resamples)
        if out["operating_point"]["threshold"] is not None:
            flagged = proba_test[:, positive] >= out["operating_point"]["threshold"]
    out["lesion_level"] = lesion_level(class_names, y_test, proba_test, groups_test, positive, seed, opts,
                                       decision_weights)
    columns = subgroup_columns(meta_test, opts.subgroups)
    out["subgroups"] = {"columns": columns, "at": "operating point" if flagged is not None else "argmax",
                        "tables": {c: subgroup_table(c, meta_test[c], y_test, pred, flagged, groups_test, positive,
                                                     seed, opts.resamples) for c in columns}}
    if opts.subgroups is None and not columns:
        out["subgroups"]["note"] = ("the cache stores no sex, age, body-site or dataset column; extract with "
                                    "--metadata CSV (e.g. HAM10000_metadata.csv) to get subgroup results")
    return out


def lesion_level(class_names, y, proba, groups, positive, seed, opts: ClinicalOptions, decision_weights) -> dict:
    """compute_metrics (and intervals) of probabilities averaged over each lesion's images."""
    ly, lp, multi = lesion_means(y, proba, groups)
    if not any(g for g in groups):
        return {"lesions": int(len(ly)), "note": "no group ids in the cache: every image is its own lesion, so "
                "lesion-level results equal image-level ones"}
    m = compute_metrics(ly, lp, class_names, decision_weights=decision_weights, positive=positive)
    m["intervals"] = metric_intervals(ly, lp, decide(lp, decision_weights), class_names, m,
                                      np.arange(len(ly)), seed, positive, opts.resamples)
    return {"lesions": int(len(ly)), "lesions_with_several_images": multi, "metrics": m}


def limitations(config: dict, metrics: dict, overlap: int) -> list[str]:
    """The report's closing "Limitations" section, generated from the run's facts."""
    split, sizes = config["split"], config["split"]["sizes"]
    test = sizes["test"]
    out = []
    grouped = any(sizes[s]["groups"] for s in sizes)
    origin = f"reused from `{split['from']}`" if split.get("from") else f"seed {split.get('seed')}"
    out.append(("One split, grouped by lesion/patient (no lesion in two splits)" if grouped else
                "One split with no lesion/patient ids: images of one lesion may sit in both training and test, "
                "which flatters every figure") + f", {origin}; another split or seed moves the figures within "
               "(roughly) their intervals.")
    out.append(f"The test split has {test['images']} images"
               + (f" of {test['groups']} lesions" if test["groups"] else "") + ": "
               + ", ".join(f"{n} {k}" for n, k in test["per_class"].items()) + ".")
    op = metrics.get("operating_point") or {}
    if op.get("threshold") is not None:
        out.append(f"PPV and NPV hold at this test prevalence of {op['positive']} ({op['test_prevalence']:.1%}); "
                   "in a population with another prevalence they differ, while sensitivity and specificity carry "
                   "over better.")
    out.append("Overlap: " + (f"{overlap} test images have the same bytes (SHA-256) as a training or validation "
                              "image: the test figures are optimistic." if overlap else
                              "no test image has the same bytes (SHA-256) as a training or validation image."))
    cal = metrics.get("calibration") or {}
    out.append(f"Calibration: temperature {cal['temperature']:.2f} fitted on the validation split"
               + (" after undoing the class-weight prior" if any(cal.get("prior_shift") or []) else "")
               + "; probabilities estimate the training data's class prevalence, not a clinic's."
               if cal.get("applied") else
               f"Calibration: not applied ({cal.get('reason', 'switched off')}); probabilities are the head's own.")
    out += [f"Small numbers: {w}." for w in metrics.get("small_numbers", [])]
    out.append("The intervals cover resampling of these lesions only: not another clinic, camera, dermoscope, "
               "population or skin type, nor a change of label practice; only an external evaluation "
               "(`bottleneck evaluate RUN --cache OTHER`) speaks to those.")
    return out
