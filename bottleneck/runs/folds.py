"""`train-head --folds K`, the small-data mode: out-of-fold figures over every non-test image.

With 70 images a test split holds 7, and every figure rests on them. Here the non-test rows (every labeled row with
`--test 0`) are cut into K grouped, stratified folds (`make_folds`, as sweep's); each fold's head is fitted on the
other folds, early-stopped on a grouped slice of them (`cv_parts`), calibrated and given its operating point's
threshold on that same slice (which plays the validation split), and predicts its held-out fold. No row is scored by
a head that saw it, or whose epoch, temperature or threshold it chose. The pooled out-of-fold (OOF) predictions are
scored as a test split is (intervals by bootstrap over their lesions, lesion-level, subgroups), beside each fold's.

    cache -> split (its test split kept, or none) -> K folds -> per fold: fit, calibrate, threshold, predict -> OOF
          -> final head on every non-test row for the folds' mean best epoch count (head.keras) -> test, once

split.csv and predictions.csv carry a `fold` column (1..K; empty for test rows): every OOF figure recomputes from
predictions.csv's rows with a fold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..cache import CacheData, is_streamed, take
from ..errors import InputError
from ..heads import (
    SPLITS,
    HeadConfig,
    Part,
    class_weights,
    cv_parts,
    duplicates_metrics,
    epoch_bar,
    fit_head,
    fit_stack,
    make_folds,
    predict_log_proba,
)
from ..stats import (
    DecisionRule,
    binary_stats,
    binary_support,
    bootstrap,
    calibrate_on_validation,
    calibration_figures,
    choose_threshold,
    clinical_results,
    compute_metrics,
    data_checks,
    decide,
    group_keys,
    limitations,
    positive_index,
    resampling_units,
    uncalibrated_record,
)
from ..util import finite_or_null, write_csv, write_json_atomic
from .directory import predictions_frame, staged, write_history
from .fold_report import oof_limitations, oof_section
from .plots import plot_confusion, plot_curves, plot_reliability, plot_roc
from .report import write_head_report
from .splitting import resolve_split
from .train import (
    HeadFit,
    RunOptions,
    RunResult,
    fit_on_split,
    head_run_config,
    open_run,
    rerun_command,
    split_run,
    split_sizes,
    test_overlap,
)


def train_head_run(cache: str | Path, head: HeadConfig = HeadConfig(), opts: RunOptions = RunOptions()) -> RunResult:
    """`bottleneck train-head`: a head on one train/val/test split (train.py `split_run`), or with `opts.folds` K
    grouped folds and their pooled out-of-fold figures (`folds_run`)."""
    return folds_run(cache, head, opts) if opts.folds else split_run(cache, head, opts)



def check_fold_options(opts: RunOptions) -> None:
    """--folds refused in one line where it cannot run: 1 or negative, or with stored views."""
    if opts.folds == 1 or opts.folds < 0:
        raise InputError(f"--folds should be 0 (one train/val/test split) or at least 2, e.g. 5; received {opts.folds}")
    if opts.augment or opts.tta:
        raise InputError("--folds does not support --augment or --tta yet (each fold would need its own views); "
                         "drop them, or use --folds 0 for a train/val/test run with views")


def check_fold_counts(data: CacheData, split: np.ndarray, groups: np.ndarray, k: int) -> None:
    """Every class needs K lesions (groups; images without one count alone) among the folded rows, one per fold."""
    rows = np.flatnonzero(np.isin(split, ("train", "val")) & (data.labels >= 0))
    keys = group_keys(groups[rows], data.image_ids[rows])
    unit = "lesions" if any(g for g in data.groups[rows]) else "images"
    where = "non-test images" if (split == "test").any() else "images"
    for c, name in enumerate(data.class_names):
        n = len(set(keys[data.labels[rows] == c]))
        if 0 < n < k:
            raise InputError(f"--folds {k}: class {name!r} has only {n} {unit} among the {len(rows)} {where}, and "
                             f"each fold needs one; use --folds {n} or fewer" if n >= 2 else
                             f"--folds {k}: class {name!r} has only {n} {unit[:-1]} among the {len(rows)} {where}; "
                             "folds need at least 2 of every class: add images, or merge or drop it (--class-map)")


@dataclass
class FoldPredictions:
    """The pooled out-of-fold predictions: every folded row, each by the head of the fold that held it out."""

    rows: np.ndarray  # the folded rows (train+val, or every labeled row with --test 0), ascending
    fold: np.ndarray  # (len(rows),) 0-based fold of each row
    logp: np.ndarray  # (len(rows), C) float64 log-probabilities as reported: its fold's calibration applied, if any
    own_logp: np.ndarray  # (len(rows), C) the same before calibration: the fold heads' own
    weights: np.ndarray  # (len(rows), C) decision weights of each row's fold (its calibration's; 1 without one)
    threshold: np.ndarray  # (len(rows),) the operating point's threshold of each row's fold; nan without one
    per_fold: list[dict]


def fit_fold(data: CacheData, part: tuple[np.ndarray, np.ndarray, np.ndarray], head: HeadConfig,
             opts: RunOptions, trained=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict]:
    """One fold (fit, stop, held rows): a head fitted on `fit`, early-stopped on `stop`, calibrated on `stop` where
    `calibrate_on_validation` allows it, its threshold chosen on `stop`; then `held` predicted. Returns held's (log-
    probabilities as reported, the head's own, decision weights, threshold or nan, the fold's record).
    `trained`: the fold's head trained already (a StackedHead of `fit_folds`), else it is fitted here."""
    fit, stop, held = part
    x, y, names = data.features, data.labels, data.class_names
    if trained is None:
        trained = fit_head(take(x, fit), y[fit], take(x, stop), y[stop], len(names), head,
                           callbacks=[epoch_bar(head.epochs, opts.progress)])
    own_stop, own_held = (predict_log_proba(trained.model, take(x, r)) for r in (stop, held))
    weights = class_weights(y[fit], len(names), head.class_weight)
    if opts.clinical.calibrate:
        calibration, cal = calibrate_on_validation(np.exp(own_stop), y[stop], data.groups[stop], weights, names,
                                                   head.seed)
    else:
        calibration, cal = None, uncalibrated_record("switched off (--no-calibrate)", len(names), weights)
    stop_logp, held_logp = (calibration.apply_log(v) if calibration else v for v in (own_stop, own_held))
    rule = DecisionRule.chosen(opts.decision, calibration)
    positive = positive_index(names, opts.clinical.positive)
    threshold = None if positive is None else choose_threshold(y[stop], np.exp(stop_logp[:, positive]), positive,
                                                               opts.clinical.target_sensitivity)
    m = compute_metrics(y[held], np.exp(held_logp), names, train_labels=y[fit], decision_weights=rule.decision_weights,
                        positive=positive, log_proba=held_logp)
    record = {"images": int(len(held)), "lesions": int(resampling_units(data.groups[held]).max()) + 1,
              "fit_images": int(len(fit)), "early_stopping_images": int(len(stop)),
              "best_epoch": trained.best_epoch, "epochs_run": len(trained.history["loss"]),
              "seconds": round(trained.seconds, 3), "accuracy": m["accuracy"],
              "balanced_accuracy": m["balanced_accuracy"], "roc_auc_macro": m["roc_auc_macro"],
              "calibration": {"applied": calibration is not None, "reason": cal.get("reason"),
                              "temperature": calibration.temperature if calibration else None,
                              "flags": cal.get("flags", [])},
              "threshold": threshold}
    w = np.ones(len(names)) if rule.decision_weights is None else np.asarray(rule.decision_weights, dtype=np.float64)
    return held_logp, own_held, w, np.nan if threshold is None else threshold, record


def fit_folds(data: CacheData, grouped: CacheData, split: np.ndarray, head: HeadConfig,
              opts: RunOptions) -> FoldPredictions:
    """Every fold fitted (`fit_fold`) on the folds and early-stopping slices of `grouped` (near-duplicates joined)."""
    seed = opts.split.seed
    folds = make_folds(grouped, split, opts.folds, seed)
    n, c = len(data.labels), len(data.class_names)
    logp, own, weights, threshold = np.zeros((n, c)), np.zeros((n, c)), np.ones((n, c)), np.full(n, np.nan)
    per_fold = []
    parts = cv_parts(grouped, split, folds, seed)
    heads = [None] * len(parts)
    if not is_streamed(data.features):  # every fold's head at once, in one traced graph (heads/stack.py)
        heads = fit_stack(data.features, data.labels, [Part(head, fit, stop) for fit, stop, _ in parts], c,
                          [epoch_bar(head.epochs, opts.progress, desc=f"train-head, {len(parts)} folds")])
    for f, (part, trained) in enumerate(zip(parts, heads)):
        held = part[2]
        logp[held], own[held], weights[held], threshold[held], record = fit_fold(data, part, head, opts, trained)
        per_fold.append({"fold": f + 1} | record)
    rows = np.flatnonzero(folds >= 0)
    return FoldPredictions(rows, folds[rows], logp[rows], own[rows], weights[rows], threshold[rows], per_fold)


def fold_summary(per_fold: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1: the folds are a sample of the cuts that could have been drawn)
    of the per-fold figures."""
    out = {}
    for k in ("balanced_accuracy", "roc_auc_macro", "accuracy", "images", "best_epoch"):
        vals = [f[k] for f in per_fold if f.get(k) is not None]
        out[k] = {"mean": float(np.mean(vals)) if vals else None,
                  "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "n": len(vals)}
    return out


def oof_point(y: np.ndarray, score: np.ndarray, oof: FoldPredictions, groups: np.ndarray, name: str,
              positive: int, seed: int, opts: RunOptions) -> tuple[dict, np.ndarray | None]:
    """(record, rows flagged) of the operating point out of fold: each row flagged by its own fold's threshold (chosen
    on that fold's early-stopping slice for the target sensitivity), the pooled flags scored with intervals."""
    record = {"positive": name, "threshold": None, "thresholds": [f["threshold"] for f in oof.per_fold],
              "target_sensitivity": opts.clinical.target_sensitivity, "chosen_on": "each fold's early-stopping slice"}
    missing = [f["fold"] for f in oof.per_fold if f["threshold"] is None]
    if missing:
        return record | {"reason": f"the early-stopping slice of fold {missing[0]} holds no {name} image to choose "
                                   "a threshold on"}, None
    flagged = score >= oof.threshold
    units = resampling_units(groups)
    figures = bootstrap(binary_stats(y, flagged, positive), None, units, seed, opts.clinical.resamples,
                        support=binary_support(y, flagged, positive, units))
    return record | {"oof": figures, "positives": int((y == positive).sum()), "images": int(len(y)),
                     "prevalence": float((y == positive).mean())}, flagged


def pooled_figures(data: CacheData, oof: FoldPredictions, head: HeadConfig, opts: RunOptions) -> dict:
    """metrics.json's "oof": the pooled out-of-fold predictions scored as a test split is (`compute_metrics`, their
    lesion-bootstrap intervals, operating point, lesion-level and subgroups by `clinical_results`, calibration)."""
    names, y, groups = data.class_names, data.labels[oof.rows], data.groups[oof.rows]
    positive = positive_index(names, opts.clinical.positive)
    proba = np.exp(oof.logp)
    weights = None if (oof.weights == 1).all() else oof.weights
    m = compute_metrics(y, proba, names, train_labels=y, decision_weights=weights, positive=positive,
                        log_proba=oof.logp)
    point = None if positive is None else oof_point(y, proba[:, positive], oof, groups, names[positive], positive,
                                                    head.seed, opts)
    out = {"metrics": m} | clinical_results(names, y, proba, groups, {k: v[oof.rows] for k, v in data.meta.items()},
                                            m, opts.clinical, head.seed, weights, point=point)
    calibrated = sum(f["calibration"]["applied"] for f in oof.per_fold)
    out["calibration"] = {"folds_calibrated": calibrated, "folds": len(oof.per_fold),
                          "test": calibration_figures(y, np.exp(oof.own_logp), proba if calibrated else None,
                                                      decide(proba, weights))}
    out["decision_rule"] = {"rule": opts.decision, "per_fold": True,
                            "text": DecisionRule.chosen(opts.decision, None).describe()}
    out["sizes"] = {"images": int(len(y)), "lesions": int(resampling_units(groups).max()) + 1,
                    "per_class": {n: int((y == c).sum()) for c, n in enumerate(names)}}
    return out


def final_fit(data: CacheData, split: np.ndarray, oof: FoldPredictions, head: HeadConfig,
              opts: RunOptions) -> HeadFit:
    """The head the run serves: trained on every folded row for the folds' mean best epoch count (as a sweep's
    winner), with no early stopping; scored once on the test split when there is one (`fit_on_split`, final)."""
    epochs = max(1, int(round(np.mean([f["best_epoch"] for f in oof.per_fold]))))
    final_head, plain = replace(head, epochs=epochs), replace(opts, folds=0)
    if (split == "test").any():
        return fit_on_split(data, split, final_head, plain, final=True)
    x, y, names, rows = data.features, data.labels, data.class_names, oof.rows
    trained = fit_head(take(x, rows), y[rows], None, None, len(names), final_head,
                       callbacks=[epoch_bar(epochs, opts.progress)])
    own = predict_log_proba(trained.model, take(x, rows))
    rule = DecisionRule.chosen(opts.decision, None)
    positive = positive_index(names, opts.clinical.positive)
    metrics = {"train": {"n": int(len(rows)), "accuracy": float((decide(np.exp(own)) == y[rows]).mean())},
               "decision_rule": rule.record(),
               "calibration": uncalibrated_record(
                   "the served head is trained on every image, with none held out to fit a temperature on; each "
                   "fold's own calibration is in the out-of-fold figures", len(names),
                   class_weights(y[rows], len(names), head.class_weight)),
               "operating_point": {"positive": None if positive is None else names[positive], "threshold": None,
                                   "reason": "the served head is trained on every image, with none held out to "
                                             "choose a threshold on; each fold's is in the out-of-fold figures"},
               "data_checks": data_checks({k: v[rows] for k, v in data.meta.items()}, split[rows],
                                          str(data.attrs.get("source", "")), any(g for g in data.groups[rows]))}
    sizes = split_sizes(data, {s: np.flatnonzero(split == s) for s in SPLITS})
    return HeadFit(trained, rows, rows, np.exp(own), metrics, sizes, None, own, rule)


def folds_run(cache: str | Path, head: HeadConfig, opts: RunOptions) -> RunResult:
    """train-head --folds K: out-of-fold figures of K folds, the served head trained on every non-test row, and the
    run directory (the files of any run, with a `fold` column in split.csv and predictions.csv)."""
    check_fold_options(opts)
    data, out, opts = open_run(cache, head, opts)
    command = rerun_command(cache, out, head, opts)
    split, split_info, groups = resolve_split(data, opts.split, opts.split_from, opts.duplicates, folded=True)
    check_fold_counts(data, split, groups, opts.folds)
    start = time.perf_counter()
    with staged(out, opts.overwrite) as tmp:
        oof = fit_folds(data, replace(data, groups=groups), split, head, opts)
        fit = final_fit(data, split, oof, head, opts)
        pooled = pooled_figures(data, oof, head, opts)
        fit.metrics |= {"protocol": protocol(oof, split), "oof": pooled,
                        "folds": {"k": opts.folds, "per_fold": oof.per_fold, "summary": fold_summary(oof.per_fold)},
                        "near_duplicates": duplicates_metrics(split_info.get("duplicates"))}
        extra = {"folds": {"k": opts.folds, "seed": opts.split.seed, "protocol": fit.metrics["protocol"],
                           "final_epochs": len(fit.trained.history["loss"]),
                           "seconds": round(time.perf_counter() - start, 3)}}
        config = head_run_config(data, fit, head, split_info, opts, command, final=True, extra=extra)
        write_folds_run(tmp, data, split, fit, oof, config, out.name)
    return RunResult(out, fit.metrics, fit.sizes, fit.trained.best_epoch, fit.trained.seconds, split_info,
                     data.class_map)


def protocol(oof: FoldPredictions, split: np.ndarray) -> str:
    """The protocol in words, as the report and metrics.json say it."""
    k, n = len(oof.per_fold), len(oof.rows)
    lesions = sum(f["lesions"] for f in oof.per_fold)
    test = int((split == "test").sum())
    return (f"{k}-fold out-of-fold over {n} images of {lesions} lesions"
            + (f"; test split of {test} images scored once by the final head" if test else "; no test split"))


def write_folds_run(tmp: Path, data: CacheData, split: np.ndarray, fit: HeadFit, oof: FoldPredictions, config: dict,
                    name: str) -> None:
    """The files of a head run into `tmp`: split.csv and predictions.csv with a fold column (predictions of the
    folded rows out of fold, of test rows by the final head); the figures of the test split when there is one, else
    of the out-of-fold predictions."""
    import pandas as pd

    names, keep = data.class_names, split != ""
    fold = np.full(len(split), "", dtype=object)
    fold[oof.rows] = [str(f + 1) for f in oof.fold]
    write_csv(tmp / "split.csv", pd.DataFrame({"image_id": data.image_ids[keep], "split": split[keep],
                                               "fold": fold[keep]}))
    write_history(tmp / "history.csv", fit.trained.history)
    in_test = split[fit.rows] == "test"
    test = fit.rows[in_test]
    weights = fit.rule.decision_weights
    test_w = np.broadcast_to(np.ones(len(names)) if weights is None else np.asarray(weights), (len(test), len(names)))
    logp = np.concatenate([oof.logp, fit.log_proba[in_test]])
    frame = predictions_frame(data, split, np.exp(logp), np.concatenate([oof.rows, test]), names,
                              np.concatenate([oof.weights, test_w]), logp, fit.rule.rule)
    frame.insert(frame.columns.get_loc("split") + 1, "fold", [str(f + 1) for f in oof.fold] + [""] * len(test))
    write_csv(tmp / "predictions.csv", frame)
    metrics = fit.metrics
    write_json_atomic(tmp / "metrics.json", finite_or_null(metrics))
    write_json_atomic(tmp / "config.json", config)
    fit.trained.model.save(tmp / "head.keras")
    plot_curves(fit.trained.history, tmp / "curves.png")
    pooled = metrics["oof"]
    if len(test):
        where, y, logp_of, shown = f"test split ({len(test)} images)", data.labels[test], logp[len(oof.rows):], metrics
    else:
        where, y, logp_of = f"out of fold ({len(oof.rows)} images)", data.labels[oof.rows], oof.logp
        shown = pooled | {"test": pooled["metrics"]}
    plot_confusion(shown["test"]["confusion_matrix"], names, tmp / "confusion.png", title=where)
    plot_reliability(shown["calibration"]["test"], tmp / "calibration.png", title=f"Reliability, {where}")
    point = shown["operating_point"]
    plot_roc(y, np.exp(logp_of), names, tmp / "roc.png", None if point["positive"] is None else
             names.index(point["positive"]), point, title=f"ROC, {where}", log_proba=logp_of)
    limits = limitations(config, metrics, test_overlap(data, split)) if len(test) else oof_limitations(config, metrics)
    write_head_report(tmp / "report.md", config, metrics, name, limits, extra=oof_section(config, metrics, names))
