"""Calibration: temperature scaling after undoing the class-weight prior shift, fitted on validation, and how a
run's probabilities become decisions when served (`DecisionRule`); ECE, Brier score and the reliability diagram.

    head probabilities (val) -> Calibration.fit -> Calibration.apply (any split) -> calibrated probabilities

Pure numpy/scipy, like metrics.py: every figure recomputes from `predictions.csv` and config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .metrics import log_softmax
from .units import resampling_units

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error
T_BOUNDS = (0.05, 20.0)  # the temperature is searched within these; a fit at either bound is flagged
# Calibration is fitted only on a validation split of at least MIN_VAL_IMAGES images holding MIN_VAL_PER_CLASS of
# every class: one temperature fitted on 10 images (1 melanoma) made a real run's ECE worse, not better.
MIN_VAL_IMAGES = 30
MIN_VAL_PER_CLASS = 5
CROSS_FOLDS = 5  # folds of validation (whole lesions) that check the fit on rows it was not fitted on
RULE = (f"fitted only on a validation split of at least {MIN_VAL_IMAGES} images with at least {MIN_VAL_PER_CLASS} "
        f"of every class; cross-fitted over {CROSS_FOLDS} folds of whole lesions (fitted on the other folds, scored "
        "on the held-out one), temperature after undoing the class-weight prior shift and temperature alone are "
        "compared, and the better is applied only when it lowers the validation negative log-likelihood")


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
        shift = 0.0 - np.log(w)  # 0.0 -: no -0.0 in config.json
        z = log_proba(proba_val) + shift
        rows = np.arange(len(y_val))

        def nll(log_t: float) -> float:
            s = z / math.exp(log_t)
            s = s - s.max(axis=1, keepdims=True)
            return float(-(s[rows, y_val] - np.log(np.exp(s).sum(axis=1))).mean())

        best = minimize_scalar(nll, bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])), method="bounded",
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

    def apply_log(self, log_p: np.ndarray) -> np.ndarray:
        """`apply` on float64 log-probabilities, giving log-probabilities: nothing clipped or rounded to 0 or 1."""
        return log_softmax((np.asarray(log_p, dtype=np.float64) + np.array(self.shift)) / self.temperature)

    def undo_log(self, log_p: np.ndarray) -> np.ndarray:
        """`undo` on float64 log-probabilities, giving log-probabilities."""
        return log_softmax(self.temperature * np.asarray(log_p, dtype=np.float64) - np.array(self.shift))

    def record(self) -> dict:
        return {"applied": True, "temperature": self.temperature, "prior_shift": list(self.shift),
                "decision_weights": list(self.decision_weights), "fitted_on": "val"}


def uncalibrated_record(reason: str, n_classes: int, class_weights: dict[int, float] | None) -> dict:
    """The calibration record of a run whose probabilities stay the head's own: why, the prior shift that
    calibration would have undone, and the decision weights of the head's own probabilities (all 1: its argmax,
    the decisions a calibrated head makes too), so a skipped calibration changes neither probabilities nor
    decisions."""
    w = np.array([class_weights[k] for k in range(n_classes)]) if class_weights else np.ones(n_classes)
    return {"applied": False, "reason": reason, "prior_shift": [float(v) for v in 0.0 - np.log(w)],
            "decision_weights": [1.0] * n_classes}


def nll(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (natural log; 0 is best)."""
    return float(-log_proba(proba)[np.arange(len(y)), y].mean()) if len(y) else 0.0


def cross_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold of each row: whole lesions (resampling units), shuffled by `seed` within their class and dealt
    round-robin, so every fold holds whole lesions and about its share of each class."""
    units = resampling_units(groups)
    n = int(units.max()) + 1
    label = np.zeros(n, dtype=np.int64)
    label[units] = y
    order = np.lexsort((np.random.default_rng(seed).permutation(n), label))
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % k
    return fold[units]


def bound_flag(t: float) -> str | None:
    """A warning when the fitted temperature sits at a bound of its search: the optimum lies beyond it."""
    lo, hi = T_BOUNDS
    if lo * 1.01 < t < hi / 1.01:
        return None
    which = "lower" if t <= lo * 1.01 else "upper"
    return (f"the fitted temperature {t:.3f} is at the {which} bound of its search ({lo:g}-{hi:g}): the optimum "
            "lies beyond it, so the head's probabilities are far from calibrated and this temperature is not an "
            "estimate to rely on")


def _held_out_nll(proba: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int,
                  class_weights: dict[int, float] | None) -> tuple[float, list[float]]:
    """(mean NLL of every row calibrated by a fit on the other folds, the k fitted temperatures)."""
    held = np.zeros(len(y))  # (N,) -log p(true class), calibrated without the row's own fold
    temperatures = []
    for f in range(k):
        out = fold == f
        part = Calibration.fit(proba[~out], y[~out], class_weights)
        held[out] = -log_proba(part.apply(proba[out]))[np.arange(int(out.sum())), y[out]]
        temperatures.append(part.temperature)
    return float(held.mean()), temperatures


def calibrate_on_validation(proba_val: np.ndarray, y_val: np.ndarray, groups_val: np.ndarray,
                            class_weights: dict[int, float] | None, class_names: list[str],
                            seed: int = 0) -> tuple[Calibration | None, dict]:
    """(calibration, record): calibration where it helps (RULE), else None and the record says why.

    Skipped on a validation split with too few images or too few of a class. Otherwise cross-fitted: per fold of
    whole validation lesions, a calibration fitted on the other folds scores the held-out fold's NLL, for each
    candidate (with and without the prior shift); the better one is applied (as fitted on the whole validation
    split) only when its held-out NLL is below the head's own."""
    c = proba_val.shape[1]
    counts = np.bincount(y_val, minlength=c)
    facts = {"rule": RULE, "val_images": int(len(y_val)),
             "val_per_class": {n: int(counts[k]) for k, n in enumerate(class_names)}}
    short = [f"{class_names[k]} {counts[k]}" for k in range(c) if counts[k] < MIN_VAL_PER_CLASS]
    if len(y_val) < MIN_VAL_IMAGES or short:
        reason = (f"too few validation images to fit it on ({len(y_val)}" + (f", of which {', '.join(short)}"
                                                                              if short else "")
                  + f"), where it needs at least {MIN_VAL_IMAGES} and {MIN_VAL_PER_CLASS} of every class")
        return None, uncalibrated_record(reason, c, class_weights) | facts
    k = min(CROSS_FOLDS, int(resampling_units(groups_val).max()) + 1)
    fold = cross_folds(y_val, groups_val, k, seed)
    # Candidates: temperature after undoing the class-weight prior shift, and (where there is a shift) temperature
    # alone: an early-stopped head's tilt is not always the full prior shift; the lower held-out NLL is chosen.
    candidates = {"prior shift and temperature": class_weights}
    if class_weights and len({round(v, 12) for v in class_weights.values()}) > 1:
        candidates["temperature alone"] = None
    held = {name: _held_out_nll(proba_val, y_val, fold, k, w) for name, w in candidates.items()}
    chosen = min(held, key=lambda name: held[name][0])
    full = Calibration.fit(proba_val, y_val, candidates[chosen])
    cross = {"folds": k, "unit": "lesion", "nll_before": nll(y_val, proba_val), "nll_after": held[chosen][0],
             "temperatures": held[chosen][1], "chosen": chosen,
             "candidates": {name: nll_after for name, (nll_after, _) in held.items()}}
    flag = bound_flag(full.temperature)
    facts |= {"fitted_temperature": full.temperature, "temperature_at_bound": flag is not None,
              "cross_fit": cross, "flags": [flag] if flag else []}
    if not cross["nll_after"] < cross["nll_before"]:
        reason = (f"it did not help on validation: cross-fitted over {k} folds, the held-out negative "
                  f"log-likelihood is {cross['nll_after']:.3f} calibrated against {cross['nll_before']:.3f} without")
        return None, uncalibrated_record(reason, c, class_weights) | facts
    return full, full.record() | facts


DECISIONS = ("balanced", "most-probable")  # --decision: how probabilities become a predicted class


def check_decision(rule, where: str = "--decision") -> str:
    if rule not in DECISIONS:
        raise InputError(f"{where} should be balanced or most-probable; received {rule!r}")
    return rule


@dataclass(frozen=True)
class DecisionRule:
    """How a run's probabilities become decisions: at training (`chosen`) and when served (evaluate, predict,
    export; `of`, from config.json or labels.json).

    balanced (the default): the equal-prior rule, argmax of the probabilities times the decision weights, class
    weight ** (1 / T) after calibration: the class the head itself ranks first, and a head trained with balanced
    class weights ranks as if every class were equally common, which is what balanced accuracy rewards.
    most-probable: argmax of the probabilities as reported (calibrated ones estimate the training prevalence, so a
    rare class is predicted less often). Without calibration both rules take the argmax of the head's own
    probabilities."""

    calibration: Calibration | None  # what the saved head has folded in (None: nothing)
    calibrated: bool  # whether the served probabilities keep it (False: --no-calibrate undid it)
    decision_weights: tuple[float, ...] | None
    positive: str | None
    threshold: float | None  # on the served probabilities of `positive`
    rule: str = "balanced"  # one of DECISIONS

    @classmethod
    def chosen(cls, rule: str, calibration: Calibration | None) -> DecisionRule:
        """The rule of a head being trained with --decision `rule` and (when applied) `calibration`."""
        weights = calibration.decision_weights if calibration is not None and rule == "balanced" else None
        return cls(calibration, calibration is not None, weights, None, None, check_decision(rule))

    @classmethod
    def of(cls, config: dict, calibrate: bool = True) -> DecisionRule:
        """The rule of a run's config.json (or an export's labels.json). Older runs, without "decision_rule": the
        rule they used, balanced (their decision weights, when calibrated); no threshold without an operating point."""
        rule = check_decision(config.get("decision_rule", "balanced"), "key 'decision_rule' of the run's config.json")
        cal = Calibration.from_record(config.get("calibration"))
        op = config.get("operating_point") or {}
        kept = cal is not None and calibrate
        threshold = op.get("threshold") if kept or cal is None else op.get("threshold_uncalibrated")
        return cls(cal, kept, cal.decision_weights if kept and rule == "balanced" else None, op.get("positive"),
                   threshold, rule)

    def describe(self) -> str:
        """What the rule does, in a clause (after "balanced: " or "most-probable: "), for the report and the CLI."""
        if self.decision_weights and len(set(self.decision_weights)) > 1:
            return ("the equal-prior rule, the class with the highest probability x decision weight (class weight "
                    f"^ 1/{self.calibration.temperature:.3g}): the class the head itself ranks first, weighing every "
                    "class as if equally common; the probabilities are calibrated to the training prevalence, so it is "
                    "not always the most probable class")
        if self.rule == "balanced":
            return ("the class with the highest probability x decision weight, with no weight to apply (no "
                    "calibration, or no class weights to undo): the most probable class; a head trained with balanced "
                    "class weights (the default) weighs every class as if equally common")
        return "the class of highest probability" + (
            ", calibrated to the training prevalence (a rare class is predicted less often than under the balanced "
            "rule)" if self.calibrated else ", the head's own (not calibrated)")

    def record(self) -> dict:
        return {"rule": self.rule, "text": self.describe(), "calibrated": self.calibrated,
                "temperature": self.calibration.temperature if self.calibration else None,
                "decision_weights": list(self.decision_weights) if self.decision_weights else None,
                "positive": self.positive, "threshold": self.threshold}


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS,
                               pred: np.ndarray | None = None) -> float:
    """ECE: |accuracy - confidence| per equal-width confidence bin, weighted by the bin's share. The confidence is
    the probability of the predicted class: `pred` (the run's decisions) when given, else the most probable one."""
    points = reliability(y, proba, bins, pred)
    return float(sum(p["n"] * abs(p["accuracy"] - p["confidence"]) for p in points) / len(y)) if len(y) else 0.0


def brier_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot truth (0 best, 2 worst)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(((proba - onehot) ** 2).sum(axis=1).mean()) if len(y) else 0.0


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS, pred: np.ndarray | None = None) -> list[dict]:
    """The reliability diagram's points: per non-empty bin, its mean confidence (the probability of the predicted
    class, `pred` or the most probable), accuracy (how often that class is right) and count."""
    pred = proba.argmax(axis=1) if pred is None else np.asarray(pred)
    conf = proba[np.arange(len(pred)), pred]
    hit = pred == y
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # bin k holds (k/bins, (k+1)/bins]
    return [{"confidence": float(conf[which == k].mean()), "accuracy": float(hit[which == k].mean()),
             "n": int((which == k).sum())} for k in np.unique(which)]


def calibration_figures(y: np.ndarray, before: np.ndarray, after: np.ndarray | None,
                        pred: np.ndarray | None = None) -> dict:
    """ECE, Brier score, NLL and reliability points of the head's own probabilities (`before`) and calibrated ones
    (`after`, None when not calibrated). `pred`: the run's decisions, scored on both, so before and after measure
    the same thing (the probability given to the class the run predicts); None: each one's most probable class."""
    out = {"bins": ECE_BINS, "confidence_of": "the most probable class" if pred is None else "the predicted class",
           "ece_before": expected_calibration_error(y, before, pred=pred), "brier_before": brier_score(y, before),
           "nll_before": nll(y, before), "reliability_before": reliability(y, before, pred=pred)}
    if after is not None:
        out |= {"ece_after": expected_calibration_error(y, after, pred=pred), "brier_after": brier_score(y, after),
                "nll_after": nll(y, after), "reliability_after": reliability(y, after, pred=pred)}
    return out
