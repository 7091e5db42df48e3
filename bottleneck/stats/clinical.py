"""Figures a clinician can defend: an operating point chosen on validation, lesion-level and subgroup results,
small-number warnings and the generated limitations, each test figure with its lesion bootstrap interval
(`bootstrap.py`) on the probabilities the run reports (calibrated by `calibration.py` when calibration applies).

    head probabilities (val, test) -> Calibration.fit (val) -> calibrated probabilities -> clinical_results (test)

Pure numpy/scipy/scikit-learn, like metrics.py: every figure recomputes from `predictions.csv` and config.json.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import BottleneckWarning, InputError
from .bootstrap import RESAMPLES, bootstrap, bootstrap_record, mean_of, metric_intervals, point_values, ratio, units_in
from .metrics import compute_metrics, decide, melanoma_index
from .units import resampling_units

MIN_CLASS_IMAGES = 10  # a class with fewer images in a split is warned about
MIN_TEST_GROUPS = 30  # a test split with fewer lesions (groups) is warned about
TARGET_SENSITIVITY = 0.95  # default --target-sensitivity

AGE_COLUMNS = ("age", "age_approx")
AGE_BANDS = ((30, "<30"), (50, "30-49"), (70, "50-69"), (math.inf, "70+"))  # (upper bound, exclusive; label)
# Columns a subgroup table is made of by default, where the cache has them (HAM10000 and ISIC names).
SUBGROUP_COLUMNS = ("sex", "age", "age_approx", "localization", "anatom_site_general",
                    "anatom_site_general_challenge", "dataset", "site")
UNKNOWN = "unknown"


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
                   groups: np.ndarray, positive: int | None, seed: int, resamples: int = RESAMPLES,
                   class_names: list[str] | None = None) -> list[dict]:
    """Per value of `column` (age as bands; "" as unknown), figures that compare like with like across rows:
    images, lesions and images of each class; the recall of each class present; the positive class's sensitivity
    and specificity (at the operating point when `flagged` is given, else the decisions `pred`); and balanced
    accuracy only where the subgroup holds every class of the run, since a mean over the classes a subgroup happens
    to hold is another quantity in each row (None there, the missing classes named). Each figure with its
    lesion-bootstrap interval, resampling lesions within the subgroup."""
    names = list(class_names) if class_names is not None else [str(k) for k in range(int(max(y.max(), pred.max())) + 1)]
    banded = subgroup_values(column, values)
    rows = []
    for value in _value_order(column, set(banded)):
        m = banded == value
        ym, pm, gm = y[m], pred[m], groups[m]
        units = resampling_units(gm)
        counts = np.bincount(ym, minlength=len(names))
        present = [k for k in range(len(names)) if counts[k]]
        stats = {f"recall:{names[k]}": ratio((ym == k) & (pm == k), ym == k) for k in present}
        support = {f"recall:{names[k]}": units_in(units, ym == k) for k in present}
        missing = [n for k, n in enumerate(names) if not counts[k]]
        if not missing:
            stats["balanced_accuracy"] = mean_of(list(stats.values()))
            support["balanced_accuracy"] = int(units.max()) + 1
        row = {"value": value, "images": int(m.sum()), "lesions": int(units.max()) + 1,
               "per_class": {n: int(counts[k]) for k, n in enumerate(names)}, "missing_classes": missing}
        if positive is not None:
            hit = flagged[m] if flagged is not None else pm == positive
            is_pos = ym == positive
            row |= {"positives": int(is_pos.sum()), "positive_lesions": units_in(units, is_pos)}
            stats |= {"sensitivity": ratio(hit & is_pos, is_pos), "specificity": ratio(~hit & ~is_pos, ~is_pos)}
            support |= {"sensitivity": units_in(units, is_pos), "specificity": units_in(units, ~is_pos)}
        found = bootstrap(stats, None, units, seed, resamples, support=support)
        row |= {"balanced_accuracy": found.get("balanced_accuracy"),
                "recall": {names[k]: found[f"recall:{names[k]}"] for k in present}}
        if positive is not None:
            row |= {"sensitivity": found["sensitivity"], "specificity": found["specificity"]}
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
                       "cases; extract more images of it or merge it into another class (--class-map)"
                       + ("; or use --folds 5 --test 0 for out-of-fold figures over all images" if split == "test"
                          else ""))
    return out


def few_groups_warning(n_units: int, grouped: bool) -> list[str]:
    if n_units >= MIN_TEST_GROUPS:
        return []
    what = "lesions (groups)" if grouped else "images"
    return [f"the test split has {n_units} {what} (under {MIN_TEST_GROUPS}): its figures and intervals are rough; "
            "use a larger test fraction (--test), more data, or --folds 5 --test 0 for out-of-fold figures over all "
            "images"]


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
                     decision_weights=None, val: tuple[np.ndarray, np.ndarray] | None = None,
                     point: tuple[dict, np.ndarray] | None = None) -> dict:
    """Intervals, the operating point, lesion-level results and subgroups of the test split.

    proba_test: the probabilities the run reports (calibrated when calibration applies); val: (y_val, proba_val)
    in the same form, None when nothing was held out (a final fit on train+val): then no operating point.
    point: (record, rows flagged) of an operating point chosen elsewhere, used instead of choosing one on `val`
    (out-of-fold figures: each fold's threshold, chosen inside its training part). decision_weights: (C,), or (N, C)
    when each row has its own (each fold's calibration)."""
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
    elif point is not None:
        out["operating_point"], flagged = point
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
                                                     seed, opts.resamples, class_names) for c in columns}}
    if opts.subgroups is None and not columns:
        out["subgroups"]["note"] = ("the cache stores no sex, age, body-site or dataset column; extract with "
                                    "--metadata CSV (e.g. HAM10000_metadata.csv) to get subgroup results")
    return out


def lesion_level(class_names, y, proba, groups, positive, seed, opts: ClinicalOptions, decision_weights) -> dict:
    """compute_metrics (and intervals) of probabilities averaged over each lesion's images."""
    ly, lp, multi = lesion_means(y, proba, groups)
    if np.ndim(decision_weights) == 2:  # one row of weights per image: a lesion's images share their fold's
        per_lesion = np.ones_like(lp)
        per_lesion[resampling_units(groups)] = decision_weights
        decision_weights = per_lesion
    if not any(g for g in groups):
        return {"lesions": int(len(ly)), "note": "no group ids in the cache: every image is its own lesion, so "
                "lesion-level results equal image-level ones"}
    m = compute_metrics(ly, lp, class_names, decision_weights=decision_weights, positive=positive)
    m["intervals"] = metric_intervals(ly, lp, decide(lp, decision_weights), class_names, m,
                                      np.arange(len(ly)), seed, positive, opts.resamples)
    return {"lesions": int(len(ly)), "lesions_with_several_images": multi, "metrics": m}

