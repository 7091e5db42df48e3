"""Calibration: temperature scaling after undoing the class-weight prior shift, fitted on validation, and how a
run's probabilities become decisions when served (`DecisionRule`); ECE, Brier score and the reliability diagram.

    head probabilities (val) -> Calibration.fit -> Calibration.apply (any split) -> calibrated probabilities

Pure numpy/scipy, like metrics.py: every figure recomputes from `predictions.csv` and config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error


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
