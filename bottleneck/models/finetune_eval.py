"""A fine-tuned model scored as a head run is (runs/train.py's `fit_on_split`): every split from the images, a
calibration fitted on the validation split where the small-data rules allow it, decisions by the head run's rule,
an operating point chosen on validation, intervals, lesion-level and subgroup tables.

    best checkpoint -> probabilities of every split (the images, once) -> calibration on val -> served probabilities
    -> metrics.json (the keys of a head run's, plus head_only), predictions.csv, roc.png, calibration.png

The calibration is applied to the float64 log-probabilities here (`Calibration.apply_log`) and folded into the
model's last layer (`fold_calibration`) before model.keras is saved, so predict and export serve what the report
scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..heads import SPLITS, class_weights, duplicates_metrics, fold_calibration
from ..runs import plot_confusion, plot_reliability, plot_roc
from ..stats import (
    TARGET_SENSITIVITY,
    Calibration,
    ClinicalOptions,
    DecisionRule,
    calibrate_on_validation,
    calibration_figures,
    choose_threshold,
    clinical_results,
    data_checks,
    decide,
    evaluate_splits,
    few_groups_warning,
    log_of,
    parse_subgroups,
    positive_index,
    small_class_warnings,
    uncalibrated_record,
    warn,
)
from .classifier import predict_images


@dataclass
class TunedScores:
    """The fine-tuned model on the readable images of every split, as the run directory records it."""

    metrics: dict
    rows: np.ndarray  # the cache rows scored (readable, labeled, in a split)
    proba: np.ndarray  # (len(rows), C) float64 served probabilities: calibrated when `calibration` is set
    log_proba: np.ndarray  # (len(rows), C) float64 log-probabilities `proba` is exp of: what the AUCs rank
    raw: np.ndarray  # (len(rows), C) the model's own probabilities, before calibration
    calibration: Calibration | None
    rule: DecisionRule
    clinical: ClinicalOptions
    failed: list  # {"path", "split", "reason", "stage"} of images that could not be read
    sizes: dict  # split -> images, groups and images per class, as a head run's config.json records them


def head_clinical(source: dict) -> tuple[ClinicalOptions, str]:
    """(clinical options, decision rule) of the head run a fine-tune starts from, read back from its config.json:
    its positive class and target sensitivity (its operating point), --subgroups and --no-calibrate (its command)."""
    command = [str(c) for c in source.get("command") or []]
    op = source.get("operating_point") or {}
    subgroups = (parse_subgroups(command[command.index("--subgroups") + 1]) if "--subgroups" in command[:-1]
                 else None)
    options = ClinicalOptions(positive=op.get("positive"),
                              target_sensitivity=op.get("target_sensitivity") or TARGET_SENSITIVITY,
                              subgroups=subgroups, calibrate="--no-calibrate" not in command)
    return options, source.get("decision_rule", "balanced")


def score_images(model, images, names: list[str], size: int, batch_size: int, run: Path, source: dict,
                 progress: bool = False) -> TunedScores:
    """The fine-tuned `model` on every split from the images (one pass), calibrated on validation where it helps
    (calibration folded into `model`), and every figure of a head run's metrics.json, with the head alone's beside
    (`head_only`, from the run's metrics.json). `images`: finetune.JobImages."""
    data, split, rows, y = images.data, images.split, images.rows, images.data.labels
    all_rows = np.concatenate([rows[s] for s in SPLITS])
    proba, errors = predict_images(model, list(images.paths[all_rows]), size, batch_size, progress=progress,
                                   desc="fine-tune: evaluation")
    ok = np.array([not e for e in errors], bool)
    failed = [{"path": str(data.paths[r]), "split": str(split[r]), "reason": e, "stage": "evaluation"}
              for r, e in zip(all_rows, errors) if e]
    good, raw = all_rows[ok], proba[ok]
    yg, sg = y[good], split[good]
    if not (sg == "test").any():
        raise InputError(f"no test image of {run} could be read for evaluation; check the image root (--data)")
    clinical, rule_name = head_clinical(source)
    sizes = split_sizes(images, names)
    calibration, cal_record = _calibrate(raw, yg, sg, data.groups[good], y[rows["train"]], names, source, clinical)
    if calibration is not None:
        fold_calibration(model, calibration)  # the served model gives what the report scores
    raw_logp = log_of(raw)
    logp = calibration.apply_log(raw_logp) if calibration is not None else raw_logp
    served = np.exp(logp)
    rule = DecisionRule.chosen(rule_name, calibration)
    metrics = _metrics(data, good, yg, sg, raw, served, logp, names, y[rows["train"]], rule, clinical, cal_record,
                       source, sizes)
    head_metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    metrics["head_only"] = {k: head_metrics[k] for k in ("val", "test") if k in head_metrics}
    return TunedScores(metrics, good, served, logp, raw, calibration, rule, clinical, failed, sizes)


def split_sizes(images, names: list[str]) -> dict:
    """split -> images, groups (lesions with an id) and images per class of the job's labeled rows."""
    y, groups = images.data.labels, images.data.groups
    return {s: {"images": int(len(r)), "groups": int(len({g for g in groups[r] if g})),
                "per_class": {n: int((y[r] == c).sum()) for c, n in enumerate(names)}}
            for s, r in images.rows.items()}


def _calibrate(raw, y, split, groups, y_train, names, source, clinical) -> tuple[Calibration | None, dict]:
    """(calibration, its record) fitted on the validation split's probabilities by `calibrate_on_validation`'s rules,
    with the head's class weights (the fine-tune trained with them); none where the head run switched it off."""
    weights = class_weights(y_train, len(names), source["head"].get("class_weight", "balanced"))
    if not clinical.calibrate:
        return None, uncalibrated_record("switched off (the head run was trained with --no-calibrate)", len(names),
                                         weights)
    val = split == "val"
    return calibrate_on_validation(raw[val], y[val], groups[val], weights, names, int(source["head"].get("seed", 0)))


def _metrics(data, good, y, split, raw, served, logp, names, y_train, rule: DecisionRule,
             clinical: ClinicalOptions, cal_record: dict, source: dict, sizes: dict) -> dict:
    """metrics.json of the fine-tune run, as `fit_on_split` makes a head run's (y, split, raw, served, logp: of the
    scored rows `good`)."""
    weights, positive = rule.decision_weights, positive_index(names, clinical.positive)
    seed = int(source["head"].get("seed", 0))
    metrics = evaluate_splits(y, served, split, names, y_train, decision_weights=weights, positive=positive,
                              log_proba=logp)
    metrics["decision_rule"] = rule.record() | {"on_test": metrics["test"]["not_most_probable"]}
    train, val, test = split == "train", split == "val", split == "test"
    metrics["train"] = {"n": int(train.sum()), "accuracy": float((decide(served[train], weights) == y[train]).mean())
                        if train.any() else None}
    metrics["calibration"] = cal_record | {"test": calibration_figures(
        y[test], raw[test], served[test] if rule.calibration is not None else None, decide(served[test], weights))}
    grouped = bool(sizes["test"]["groups"])
    metrics["data_checks"] = data_checks({k: v[good] for k, v in data.meta.items()}, split,
                                         str(data.attrs.get("source", "")), grouped)
    rows = good[test]
    metrics |= clinical_results(names, y[test], served[test], data.groups[rows],
                                {k: v[rows] for k, v in data.meta.items()}, metrics["test"], clinical, seed, weights,
                                (y[val], served[val]))
    point = metrics["operating_point"]
    if rule.calibration is not None and point.get("threshold") is not None:  # the same target, uncalibrated
        k = names.index(point["positive"])
        point["threshold_uncalibrated"] = choose_threshold(y[val], raw[val][:, k], k, clinical.target_sensitivity)
    small = small_class_warnings({s: sizes[s] for s in SPLITS if s in sizes})
    small += few_groups_warning(metrics["bootstrap"]["units"], grouped)
    flags = cal_record.get("flags", [])
    warn(flags)  # the split's small numbers were warned when the head was trained on it: report.md repeats them
    if flags or small:
        metrics["warnings"] = flags + small
    metrics["small_numbers"] = small
    metrics["near_duplicates"] = duplicates_metrics((source.get("split") or {}).get("duplicates"))
    return metrics


def write_figures(tmp: Path, images, names: list[str], scored: TunedScores) -> None:
    """confusion.png, calibration.png and roc.png of the test split, as a head run draws them."""
    metrics, labels = scored.metrics, images.data.labels[scored.rows]
    test = images.split[scored.rows] == "test"
    n = int(test.sum())
    plot_confusion(metrics["test"]["confusion_matrix"], names, tmp / "confusion.png",
                   title=f"test split, {n} images (fine-tuned)")
    plot_reliability(metrics["calibration"]["test"], tmp / "calibration.png",
                     title=f"Reliability, test split ({n} images, fine-tuned)")
    point = metrics["operating_point"]
    plot_roc(labels[test], scored.proba[test], names, tmp / "roc.png",
             None if point["positive"] is None else names.index(point["positive"]), point,
             title=f"ROC, test split ({n} images, fine-tuned)", log_proba=scored.log_proba[test])


def copied_test_files(images) -> int:
    """Test images whose bytes (SHA-256) equal those of a training or validation image (as a head run counts)."""
    sha, split = images.data.sha256, images.split
    seen = {h for h in sha[(split == "train") | (split == "val")] if h}
    return int(sum(1 for h in sha[split == "test"] if h and h in seen))
