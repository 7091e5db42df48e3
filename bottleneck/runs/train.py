"""`train-head`: a head trained off a cache on a grouped split, evaluated, and written as a run directory.

    cache -> split (made from the seed, or reused) -> fit_on_split (head, metrics) -> write_head_run -> runs/<name>/

Staged and renamed into place whole (`directory.py`); sweep's winner and --folds' final head (`folds.py`) are fitted
by the same `fit_and_write`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..cache import (
    GIB,
    CacheData,
    features_record,
    is_streamed,
    library_versions,
    load_cache_within,
    resolve_memory_gb,
    take,
)
from ..errors import InputError
from ..heads import (
    HEAD_OPTIONS,
    SPLITS,
    ClassMap,
    HeadConfig,
    SplitSpec,
    TrainedHead,
    class_weights,
    duplicates_metrics,
    epoch_bar,
    fit_head,
    fold_calibration,
    map_classes,
    predict_log_proba,
    recorded_map,
    save_split,
)
from ..stats import (
    Calibration,
    ClinicalOptions,
    DecisionRule,
    calibrate_on_validation,
    calibration_figures,
    check_decision,
    check_target,
    choose_threshold,
    clinical_results,
    data_checks,
    decide,
    evaluate_splits,
    few_groups_warning,
    limitations,
    positive_index,
    small_class_warnings,
    subgroup_columns,
    uncalibrated_record,
    warn,
)
from ..util import finite_or_null, write_json_atomic
from .directory import cache_record, check_free, read_config, staged, write_history, write_predictions
from .plots import plot_confusion, plot_curves, plot_reliability, plot_roc
from .report import write_head_report
from .sanity import run_warnings
from .splitting import resolve_split
from .views import require_views, tta_log_proba, view_batches

EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class RunOptions:
    out: Path | None = None
    runs_dir: Path = Path("runs")
    split: SplitSpec = SplitSpec()
    split_from: Path | None = None
    overwrite: bool = False
    progress: bool = True
    augment: bool = False  # train on stored views, one drawn per image per epoch
    tta: bool = False  # evaluate with probabilities averaged over the stored views
    memory_gb: float | None = None  # features beyond this (GiB, float32) are streamed; None: default_memory_gb()
    views_memory_gb: float | None = None  # views beyond this are streamed; None: what memory_gb leaves them
    class_map: ClassMap | None = None  # the task (class_map.py); None: the cache's classes, or --split-from's map
    clinical: ClinicalOptions = ClinicalOptions()  # --positive, --target-sensitivity, --subgroups, --no-calibrate
    decision: str = "balanced"  # --decision: balanced (equal-prior) or most-probable (stats.DecisionRule)
    duplicates: str = "group"  # --duplicates: near-duplicates across groups joined before splitting, reported, or not
    folds: int = 0  # --folds K: out-of-fold figures of K grouped folds of the non-test rows (folds.py); 0: none


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # split -> compute_metrics dict
    split_sizes: dict
    best_epoch: int
    seconds: float
    extra: dict = field(default_factory=dict)
    class_map: dict | None = None  # class_map.map_classes's record when a --class-map defined the task


def rerun_command(cache: Path, out: Path, head: HeadConfig, opts: RunOptions) -> list[str]:
    """The train-head command with every option spelled out, so config.json reruns it even if defaults change."""
    s = opts.split
    command = ["bottleneck", "train-head", str(cache), "--out", str(out), *HEAD_OPTIONS.argv(head),  # declared order
               "--val", str(s.val), "--test", str(s.test)]
    if opts.split_from:
        command += ["--split-from", str(opts.split_from)]
    if opts.class_map is not None:
        command += ["--class-map", opts.class_map.argument]
    c = opts.clinical
    command += ["--positive", c.positive] if c.positive else []
    command += ["--target-sensitivity", f"{c.target_sensitivity:g}"]
    if c.subgroups is not None:
        command += ["--subgroups", ",".join(c.subgroups) or "none"]
    command += [] if c.calibrate else ["--no-calibrate"]
    command += ["--decision", opts.decision, "--duplicates", opts.duplicates]
    if opts.memory_gb is not None:  # only a budget the user gave: this machine's default is not a choice, and the
        command += ["--memory-gb", f"{opts.memory_gb:g}"]  # budget changes speed, not results (within noise)
    command += ["--folds", str(opts.folds)] if opts.folds else []
    return command + ["--augment"] * opts.augment + ["--tta"] * opts.tta


def split_run(cache: str | Path, head: HeadConfig = HeadConfig(), opts: RunOptions = RunOptions()) -> RunResult:
    """Train a head off `cache` on one train/val/test split, evaluate it on validation and test, write a run
    directory. `train_head_run` (folds.py) is train-head: this, or K folds with --folds."""
    if opts.folds:
        raise InputError("split_run trains on one split; train-head with --folds K is folds.train_head_run")
    data, out, opts = open_run(cache, head, opts)
    split, split_info, _ = resolve_split(data, opts.split, opts.split_from, opts.duplicates)
    return fit_and_write(data, split, split_info, head, out, opts, rerun_command(cache, out, head, opts))


def open_run(cache: str | Path, head: HeadConfig, opts: RunOptions) -> tuple[CacheData, Path, RunOptions]:
    """What a train-head does before splitting: options checked, `out` free, the cache loaded in the task's classes."""
    head.validate()
    check_target(opts.clinical.target_sensitivity)
    check_decision(opts.decision)
    budget = resolve_memory_gb(opts.memory_gb)  # opts.memory_gb stays as given (None: the default) for the rerun line
    cache = Path(cache)
    out = Path(opts.out) if opts.out else opts.runs_dir / f"{cache.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_free(out, opts.overwrite)  # before loading anything: fail fast and touch nothing
    opts = replace(opts, class_map=task_map(opts.class_map, opts.split_from))
    data = map_classes(load_cache_within(cache, budget), opts.class_map)
    positive_index(data.class_names, opts.clinical.positive)  # bad --positive or --subgroups: refused before training
    subgroup_columns(data.meta, opts.clinical.subgroups)
    return data, out, opts


def task_map(class_map: ClassMap | None, split_from: Path | None) -> ClassMap | None:
    """The class map of a run: the one given, else the one of the run whose split is reused (same task)."""
    if class_map is not None or not split_from:
        return class_map
    config = Path(split_from) / "config.json"
    return recorded_map(read_config(Path(split_from)), f"{config}: key 'class_map'") if config.is_file() else None


@dataclass
class HeadFit:
    """A head fitted on a split and evaluated: everything a run directory is written from."""

    trained: TrainedHead
    rows: np.ndarray  # every labeled row of the split (train, val, test), in that order
    fit_rows: np.ndarray  # the rows it was fitted on
    proba: np.ndarray  # (len(rows), C), with TTA when asked; calibrated when `calibration` is set
    metrics: dict
    sizes: dict  # split -> images, groups, per-class counts
    calibration: Calibration | None = None  # folded into trained.model's last layer
    log_proba: np.ndarray | None = None  # (len(rows), C) float64 log-probabilities `proba` is exp of: what AUCs rank
    rule: DecisionRule | None = None  # how `proba` became decisions (--decision)


def fit_on_split(data: CacheData, split: np.ndarray, head: HeadConfig, opts: RunOptions = RunOptions(),
                 final: bool = False) -> HeadFit:
    """Fit a head on the split and evaluate it.

    final=False: train on train, early-stop on val, report val and test. final=True (a sweep's winner):
    train on train+val for exactly `head.epochs` epochs, report test only: val no longer held out.
    With opts.augment or opts.tta, also the same head without them, to show what the views changed."""
    names = data.class_names
    idx = {s: np.flatnonzero(split == s) for s in SPLITS}
    x, y = data.features, data.labels
    fit_rows = np.concatenate([idx["train"], idx["val"]]) if final else idx["train"]
    rows = np.concatenate([idx[s] for s in SPLITS])
    eval_splits = ("test",) if final else EVAL_SPLITS
    if opts.augment or opts.tta:
        require_views(data, fit_rows if opts.augment else rows)
    val_x, val_y = (None, None) if final else (take(x, idx["val"]), y[idx["val"]])

    views_gb = views_budget_gb(data, opts)
    batches = view_batches(data, fit_rows, head, views_gb) if opts.augment else None
    trained = fit_head(take(x, fit_rows), y[fit_rows], val_x, val_y, len(names), head,
                       callbacks=[epoch_bar(head.epochs, opts.progress)], batches=batches)
    plain_logp = predict_log_proba(trained.model, take(x, rows))  # (len(rows), C) float64, the head's own
    raw_logp = tta_log_proba(trained.model, data, rows, plain_logp, views_gb) if opts.tta else plain_logp
    plain_proba, raw = np.exp(plain_logp), np.exp(raw_logp)
    in_val, in_test = split[rows] == "val", split[rows] == "test"
    positive = positive_index(names, opts.clinical.positive)
    calibration, cal_record = _calibrate(trained, plain_proba[in_val], y[rows][in_val], data.groups[rows][in_val],
                                         y[fit_rows], names, head, opts, final)
    rule = DecisionRule.chosen(opts.decision, calibration)
    weights = rule.decision_weights

    def evaluate(logp):  # every split's metrics of (served) log-probabilities, decided by the run's rule
        return evaluate_splits(y[rows], np.exp(logp), split[rows], names, y[fit_rows], splits=eval_splits,
                               decision_weights=weights, positive=positive, log_proba=logp)

    served_plain, logp = _served_log_proba(trained.model, data, rows, calibration, (plain_logp, raw_logp),
                                           views_gb if opts.tta else None)
    proba = np.exp(logp)
    metrics = evaluate(logp)
    metrics["decision_rule"] = rule.record() | {"on_test": metrics["test"]["not_most_probable"]}
    if opts.augment or opts.tta:  # the effect of views, on the same split
        metrics["views_comparison"] = _views_comparison(data, rows, fit_rows, val_x, val_y, head, opts, served_plain,
                                                        {s: metrics[s] for s in eval_splits}, evaluate, calibration)
    fitted = np.isin(rows, fit_rows)
    metrics["train"] = {"n": int(len(fit_rows)),
                        "accuracy": float((decide(proba[fitted], weights) == y[rows][fitted]).mean())}
    # Degenerate features or a one-class head: said in metrics.json and warned (one `warning:` line in the CLI).
    found = run_warnings(take(x, fit_rows), proba[split[rows] == "test"], names) + cal_record.get("flags", [])
    sizes = split_sizes(data, idx)
    test = rows[in_test]
    metrics["calibration"] = cal_record | {"test": calibration_figures(y[test], raw[in_test],
                                                                        proba[in_test] if calibration else None,
                                                                        decide(proba[in_test], weights))}
    metrics["data_checks"] = data_checks({k: v[rows] for k, v in data.meta.items()}, split[rows],
                                         str(data.attrs.get("source", "")), bool(sizes["test"]["groups"]))
    metrics |= clinical_results(names, y[test], proba[in_test], data.groups[test],
                                {k: v[test] for k, v in data.meta.items()}, metrics["test"],
                                opts.clinical, head.seed, weights,
                                None if final else (y[rows][in_val], proba[in_val]))
    point = metrics["operating_point"]
    if calibration and point.get("threshold") is not None:  # the same target on the head's own probabilities
        k = names.index(point["positive"])
        point["threshold_uncalibrated"] = choose_threshold(y[rows][in_val], raw[in_val][:, k], k,
                                                           opts.clinical.target_sensitivity)
    small = small_class_warnings({s: sizes[s] for s in SPLITS if s != "val" or not final})
    small += few_groups_warning(metrics["bootstrap"]["units"], bool(sizes["test"]["groups"]))
    warn(cal_record.get("flags", []) + small)  # run_warnings warned its own
    if found or small:
        metrics["warnings"] = found + small
    metrics["small_numbers"] = small
    return HeadFit(trained, rows, fit_rows, proba, metrics, sizes, calibration, logp, rule)


def _calibrate(trained: TrainedHead, proba_val: np.ndarray, y_val: np.ndarray, groups_val: np.ndarray,
               y_fit: np.ndarray, names: list[str], head: HeadConfig, opts: RunOptions,
               final: bool) -> tuple[Calibration | None, dict]:
    """(calibration, its config/metrics record): fitted on the validation split's plain-view probabilities where
    it helps (`calibrate_on_validation`) and folded into the head's last layer; None without a held-out validation
    split, with --no-calibrate, or where validation is too small or calibration does not lower its held-out NLL."""
    weights = class_weights(y_fit, len(names), head.class_weight)
    if final:
        return None, uncalibrated_record("trained on train+val: no held-out validation split to fit a temperature "
                                         "on", len(names), weights)
    if not opts.clinical.calibrate:
        return None, uncalibrated_record("switched off (--no-calibrate)", len(names), weights)
    # Fitted on the plain view; with TTA the calibrated probabilities of the views are averaged, as the
    # folded head gives them to evaluate --tta and predict --tta.
    calibration, cal_record = calibrate_on_validation(proba_val, y_val, groups_val, weights, names, head.seed)
    if calibration is not None:
        fold_calibration(trained.model, calibration)
    return calibration, cal_record


def _served_log_proba(model, data: CacheData, rows: np.ndarray, calibration: Calibration | None,
                      head_own: tuple[np.ndarray, np.ndarray], tta_gb: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(plain view, reported) float64 log-probabilities of `rows` as head.keras serves them: the head's own
    (`head_own`: plain, with TTA when asked) without calibration; with it, the calibrated (folded) head predicted
    again, the TTA mean when `tta_gb` is set, so that the report, `evaluate` and `predict` score the same numbers."""
    if calibration is None:
        return head_own
    plain = predict_log_proba(model, take(data.features, rows))
    return plain, plain if tta_gb is None else tta_log_proba(model, data, rows, plain, tta_gb)


def _views_comparison(data: CacheData, rows: np.ndarray, fit_rows: np.ndarray, val_x, val_y, head: HeadConfig,
                      opts: RunOptions, served_plain: np.ndarray, tta_metrics: dict, evaluate,
                      calibration: Calibration | None) -> dict:
    """The effect of --augment/--tta on the same split, each scored as this run's figures are (its calibration, its
    decision rule): a head fitted without views (with --augment), this head on the plain view alone
    (`served_plain`), and with TTA (`tta_metrics`, this run's own figures)."""
    x, y, names = data.features, data.labels, data.class_names
    compare = {}
    if opts.augment:
        base = fit_head(take(x, fit_rows), y[fit_rows], val_x, val_y, len(names), head)
        base_logp = predict_log_proba(base.model, take(x, rows))
        compare["plain head (no views)"] = evaluate(calibration.apply_log(base_logp) if calibration else base_logp)
    name = "this head" + (" (augment)" if opts.augment else "")
    compare[f"{name}, plain view only"] = evaluate(served_plain)
    if opts.tta:
        compare[f"{name}, TTA over {data.n_views + 1} views"] = tta_metrics
    return compare


def split_sizes(data: CacheData, idx: dict[str, np.ndarray]) -> dict:
    y, names = data.labels, data.class_names  # split -> images, groups (lesions with an id) and images per class
    return {s: {"images": int(len(idx[s])), "groups": int(len({g for g in data.groups[idx[s]] if g})),
                "per_class": {n: int((y[idx[s]] == c).sum()) for c, n in enumerate(names)}} for s in SPLITS}


def head_run_config(data: CacheData, fit: HeadFit, head: HeadConfig, split_info: dict, opts: RunOptions,
                    command: list[str], final: bool = False, extra: dict | None = None) -> dict:
    """config.json of a head run: how to rerun it and everything it depended on."""
    return {"command": list(command), "cache": cache_record(data), "class_names": list(data.class_names),
            "class_map": data.class_map, "head": head.to_dict(),
            "split": {**split_info, "sizes": fit.sizes}, "trained_on": "train+val" if final else "train",
            "views": {"stored": data.n_views, "augment": opts.augment, "tta": opts.tta},
            "features": features_record(data.features, resolve_memory_gb(opts.memory_gb)),
            "best_epoch": fit.trained.best_epoch, "epochs_run": len(fit.trained.history["loss"]),
            "train_seconds": round(fit.trained.seconds, 3),
            "calibration": {k: v for k, v in fit.metrics["calibration"].items() if k != "test"},
            "decision_rule": opts.decision,  # stats.DecisionRule.of reads it back (evaluate, predict, export)
            "operating_point": {k: fit.metrics["operating_point"].get(k) for k in
                                ("positive", "threshold", "threshold_uncalibrated", "target_sensitivity", "chosen_on")},
            "library_versions": library_versions(),
            "python": sys.version.split()[0], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}


def write_head_run(tmp: Path, data: CacheData, split: np.ndarray, fit: HeadFit, config: dict, name: str) -> None:
    """The nine artifacts of a head run, into the (staging) folder `tmp`."""
    names = data.class_names
    save_split(tmp / "split.csv", data.image_ids, split)
    write_history(tmp / "history.csv", fit.trained.history)
    write_predictions(tmp / "predictions.csv", data, split, fit.proba, fit.rows, names, fit.rule.decision_weights,
                      fit.log_proba, fit.rule.rule)
    write_json_atomic(tmp / "metrics.json", finite_or_null(fit.metrics))  # undefined figures: null
    write_json_atomic(tmp / "config.json", config)
    fit.trained.model.save(tmp / "head.keras")
    plot_curves(fit.trained.history, tmp / "curves.png")
    plot_confusion(fit.metrics["test"]["confusion_matrix"], names, tmp / "confusion.png",
                   title=f"test split, {fit.metrics['test']['n']} images")
    test = fit.rows[split[fit.rows] == "test"]
    in_test = split[fit.rows] == "test"
    plot_reliability(fit.metrics["calibration"]["test"], tmp / "calibration.png",
                     title=f"Reliability, test split ({len(test)} images)")
    point = fit.metrics["operating_point"]
    plot_roc(data.labels[test], fit.proba[in_test], names, tmp / "roc.png",
             None if point["positive"] is None else names.index(point["positive"]), point,
             title=f"ROC, test split ({len(test)} images)", log_proba=fit.log_proba[in_test])
    overlap = test_overlap(data, split)
    write_head_report(tmp / "report.md", config, fit.metrics, name, limitations(config, fit.metrics, overlap))


def fit_and_write(data: CacheData, split: np.ndarray, split_info: dict, head: HeadConfig, out: Path,
                  opts: RunOptions = RunOptions(), command: list[str] = (), final: bool = False,
                  extra_config: dict | None = None) -> RunResult:
    """`fit_on_split`, then the whole run directory `out`, written atomically (see `fit_on_split` for `final`)."""
    with staged(out, opts.overwrite) as tmp:
        fit = fit_on_split(data, split, head, opts, final)
        fit.metrics["near_duplicates"] = duplicates_metrics(split_info.get("duplicates"))
        config = head_run_config(data, fit, head, split_info, opts, command, final, extra_config)
        write_head_run(tmp, data, split, fit, config, out.name)
    return RunResult(out, fit.metrics, fit.sizes, fit.trained.best_epoch, fit.trained.seconds, split_info,
                     data.class_map)


def test_overlap(data: CacheData, split: np.ndarray) -> int:
    """Test images whose bytes (SHA-256) equal those of a training or validation image (a duplicate file)."""
    sha = data.sha256
    seen = {h for h in sha[(split == "train") | (split == "val")] if h}
    return int(sum(1 for h in sha[split == "test"] if h and h in seen))


def views_budget_gb(data: CacheData, opts: RunOptions) -> float:
    """Memory for stored views: opts.views_memory_gb, else --memory-gb less the features in memory (one budget)."""
    if opts.views_memory_gb is not None:
        return opts.views_memory_gb
    held = 0 if is_streamed(data.features) else data.features.nbytes / GIB
    return max(0.0, resolve_memory_gb(opts.memory_gb) - held)
