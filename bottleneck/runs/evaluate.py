"""`bottleneck evaluate RUN [--cache OTHER] [--out DIR]`: a trained head on its own test split or on an external
cache, written to a folder of its own (RUN/eval-<data>[-tta][-nocal] unless --out) that no later evaluation
replaces without --overwrite.

An external cache is checked against the run's training and validation images first (`overlap.py`): an image with
the same bytes, image id or lesion as one the head was trained on, or a near copy of one (perceptual fingerprint,
features), would flatter the result, so it is left out and counted by check (kept with --keep-overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import (
    GIB,
    CacheConfig,
    CacheData,
    features_record,
    is_streamed,
    load_cache_within,
    resolve_memory_gb,
    take,
)
from ..errors import CacheMismatchError, InputError
from ..heads import (
    ClassMap,
    load_split,
    map_classes,
    missing_sources,
    predict_log_proba,
    recorded_map,
    run_class_names,
)
from ..stats import (
    DecisionRule,
    binary_stats,
    binary_support,
    bootstrap,
    bootstrap_record,
    calibration_figures,
    compute_metrics,
    decide,
    metric_intervals,
    parse_subgroups,
    positive_index,
    resampling_units,
    subgroup_columns,
    subgroup_table,
)
from ..util import finite_or_null, sha256_file, write_json_atomic
from .directory import load_run, restore_interrupted, staged, write_predictions
from .eval_report import write_eval_report
from .overlap import Overlap, check_external, write_excluded
from .plots import plot_confusion, plot_reliability, plot_roc
from .views import require_views, tta_log_proba

# What an evaluation folder holds: --out --overwrite replaces a folder of these files only (or an empty one).
EVAL_FILES = {"metrics.json", "predictions.csv", "excluded.csv", "overlap.csv", "report.md", "confusion.png",
              "calibration.png", "roc.png"}


@dataclass
class EvalResult:
    out_dir: Path
    metrics: dict
    cache: Path
    external: bool
    unmapped: dict = field(default_factory=dict)  # class name in the cache -> images left out
    notes: list = field(default_factory=list)
    overlap: Overlap | None = None  # external evaluations only
    baseline_from: str = "training"  # whose majority class the baseline predicts: "training" or "evaluated"
    class_map: dict | None = None  # the class map's record, when one (given or the run's) relabelled the cache


def by_name(names: list[str]) -> ClassMap:
    """The class map of a run without one: each of its classes from the cache class of the same name (exact, then
    case-insensitive)."""
    return ClassMap(tuple((n, (n,)) for n in names))


def run_task(config: dict) -> ClassMap:
    """How a run's classes come from its own cache's: its recorded --class-map, else by name."""
    return recorded_map(config) or by_name(run_class_names(config))


def external_map(config: dict, data: CacheData, given: ClassMap | None) -> tuple[ClassMap, bool, str]:
    """(map, strict, how) for an external cache: --class-map when given; by name when the cache's classes are
    the run's; else the run's own map, but only when the cache has every class that map names (a `*` would
    otherwise take in a class of another name, e.g. `melanoma`, silently)."""
    names = run_class_names(config)
    recorded = recorded_map(config)
    if given is not None:
        return given, True, ""
    if recorded is None or set(data.class_names) <= set(names):
        return by_name(names), False, ""
    missing = missing_sources(recorded, data.class_names)
    if missing:
        raise InputError(f"cache {data.path} has classes {', '.join(data.class_names)}, not those the run's class "
                         f"map {recorded.spec!r} was made of ({', '.join(missing)} missing); map them onto the run's "
                         f"classes ({', '.join(names)}) with --class-map, e.g. '{names[0]}=CACHECLASS,...'")
    return recorded, False, f"classes mapped with the run's class map {recorded.spec!r}"


def evaluate_run(run_dir: str | Path, cache: str | Path | None = None, tta: bool = False,
                 memory_gb: float | None = None, class_map: ClassMap | None = None,
                 calibrate: bool = True, out: str | Path | None = None, overwrite: bool = False,
                 keep_overlap: bool = False) -> EvalResult:
    """The run's head on its own test split, or on every labeled image of another cache (external data) that the
    run did not train or validate on; written to `out`, by default RUN/eval-<data>[-tta][-nocal] (`eval_dir`).

    An existing evaluation there is refused before any work unless `overwrite`, and then replaced only once the
    new one is whole (`staged`): a failed evaluation leaves the older one as it was.
    memory_gb: features beyond it are streamed from the cache (None: default_memory_gb()). class_map: how the
    cache's classes become the run's (targets are the run's classes); by default the run's own map, or by name.
    calibrate=False: the head's own probabilities, without the run's calibration (and its decision weights).
    keep_overlap: external images found in (or near copies of) the run's training data are evaluated all the same,
    counted and listed in overlap.csv (RUN/eval-<data>...-overlap by default)."""
    memory_gb = resolve_memory_gb(memory_gb)
    run_dir = Path(run_dir)
    restore_interrupted(run_dir)  # a run left aside by a kill mid-publish
    if not run_dir.is_dir():
        raise InputError(f"run {run_dir} does not exist; pass a directory made by `bottleneck train-head`")
    config, model = load_run(run_dir, calibrate)
    rule = DecisionRule.of(config, calibrate)
    names = run_class_names(config)
    trained_on = CacheConfig(**config["cache"]["config"])
    own = Path(config["cache"]["path"])
    path = Path(cache) if cache else own
    external = cache is not None and path.resolve() != own.resolve()
    default = eval_dir(run_dir, path.stem if external else "test", tta, calibrate, keep_overlap and external)
    out = check_out(Path(out) if out is not None else default, out is None, run_dir, (path, own), overwrite)
    data = load_cache_within(path, memory_gb)
    diff = trained_on.mismatch(data.config)
    if diff:
        raise CacheMismatchError(f"cache {path} comes from another backbone configuration than run {run_dir}: "
                                 f"{diff.replace('(cache)', f'({path.name})').replace('(this run)', '(run)')}; "
                                 "extract that data with the run's configuration first")
    if external:
        data, split, rows, y_train, notes, overlap, found = _external_rows(run_dir, config, data, path, own, names,
                                                                           class_map, memory_gb, keep_overlap)
    else:
        data, split, rows, y_train, notes = _own_test_rows(run_dir, config, data, path, names, class_map)
        overlap, found = None, []
    y = data.labels
    logp = predict_log_proba(model, take(data.features, rows))  # (n, C) float64: what the AUCs rank
    if tta:
        require_views(data, rows)
        held = 0 if is_streamed(data.features) else data.features.nbytes / GIB  # one budget with the features
        logp = tta_log_proba(model, data, rows, logp, max(0.0, memory_gb - held))
        notes.append(f"probabilities averaged over the plain view and {data.n_views} stored views (TTA)")
    proba = np.exp(logp)
    positive = names.index(rule.positive) if rule.positive in names else positive_index(names, None)
    metrics = compute_metrics(y[rows], proba, names, train_labels=y_train, decision_weights=rule.decision_weights,
                              positive=positive, log_proba=logp)
    clinical = served_figures(y[rows], proba, data.groups[rows], {c: v[rows] for c, v in data.meta.items()}, names,
                              metrics, rule, positive, int(config["head"]["seed"]), run_subgroups(config))
    baseline_from = "training" if y_train is not None else "evaluated"

    unmapped_counts = data.class_map["dropped"]
    by_names = data.class_map["targets"] == by_name(names).to_record()["targets"]
    shown_map = None if by_names else data.class_map  # a map, not names
    record = {"cache": str(path.resolve()), "external": external, "tta": tta, "class_map": shown_map,
              "unmapped_classes": unmapped_counts, "notes": notes, "run": str(run_dir.resolve()),
              "out": str(out.resolve()), "features": features_record(data.features, memory_gb),
              # the baseline predicts the majority class of the run's training split when it can be read
              "majority_baseline_from": baseline_from, "decision_rule": rule.record(), **clinical}
    if external:
        record |= {"overlap_checked": overlap.checked, "overlap": overlap.record(),
                   "overlap_message": overlap.message(path.name)}
    record["metrics"] = metrics
    with staged(out, overwrite) as tmp:  # whole or not at all: an older evaluation is kept until this one is
        record["figures"] = write_figures(tmp, y[rows], proba, names, record,
                                          f"external: {path.stem}" if external else "test split")
        write_json_atomic(tmp / "metrics.json", finite_or_null(record))  # undefined figures: null
        write_predictions(tmp / "predictions.csv", data, split, proba, rows, names, rule.decision_weights, logp,
                          rule.rule)
        if found:
            write_excluded(tmp / ("overlap.csv" if overlap.kept else "excluded.csv"), found)
        write_eval_report(tmp / "report.md", config, record, run_dir.name, out.name)
    return EvalResult(out, metrics, path, external, unmapped_counts, notes, overlap, baseline_from, shown_map)


def eval_dir(run_dir: Path, data_name: str, tta: bool, calibrate: bool, keep_overlap: bool = False) -> Path:
    """RUN/eval-<data>[-tta][-nocal][-overlap], where an evaluation goes without --out. <data>: `test` (the run's
    own test split) or the external cache's file name less `.h5`. One name per data and options, the same every
    time: a script can find it, and an evaluation with other options (--tta, --no-calibrate, --keep-overlap) never
    replaces another."""
    return run_dir / (f"eval-{data_name}{'-tta' if tta else ''}{'' if calibrate else '-nocal'}"
                      f"{'-overlap' if keep_overlap else ''}")


def check_out(out: Path, default: bool, run_dir: Path, caches: tuple[Path, ...], overwrite: bool) -> Path:
    """Where the evaluation goes, checked before any work. Never the run, a cache or a folder holding one; never a
    file or a folder of anything but an evaluation's files (--overwrite cannot delete them); an existing
    evaluation only with --overwrite."""
    restore_interrupted(out)  # an older evaluation left aside by a kill mid-publish
    target = out.resolve()
    for held in (run_dir, *caches):
        if target == held.resolve() or target in held.resolve().parents:
            raise InputError(f"--out {out} would replace {held}, which this evaluation reads; choose a folder that "
                             f"holds neither the run nor a cache, e.g. {run_dir / 'eval-NAME'}")
    if out.exists() and (not out.is_dir() or not {p.name for p in out.iterdir()} <= EVAL_FILES):
        raise InputError(f"--out {out} exists and is {'a file' if not out.is_dir() else 'not an evaluation'}; "
                         "evaluate replaces only an earlier evaluation's folder: choose another --out")
    if out.exists() and not overwrite:
        same = "an evaluation of the same data with the same options" if default else "an earlier evaluation"
        raise InputError(f"evaluation {out} already exists ({same}); pass --overwrite to replace it, or --out DIR "
                         "to keep both")
    return out


def write_figures(tmp: Path, y: np.ndarray, proba: np.ndarray, names: list[str], record: dict,
                  what: str) -> list[str]:
    """confusion.png, calibration.png (reliability) and roc.png of an evaluation, as train-head draws them; the
    names of those written (no ROC curve where the images hold a single class)."""
    m, op = record["metrics"], record.get("operating_point") or {}
    marked = op.get("sensitivity") and op.get("specificity")  # undefined without positives or negatives here
    plot_confusion(m["confusion_matrix"], names, tmp / "confusion.png", title=f"{what}, {m['n']} images")
    plot_reliability(record["calibration"], tmp / "calibration.png", title=f"Reliability, {what} ({m['n']} images)")
    if len(np.unique(y)) < 2:
        return ["confusion.png", "calibration.png"]
    positive = (m.get("positive") or {}).get("class")
    plot_roc(y, proba, names, tmp / "roc.png", names.index(positive) if positive in names else None,
             {"threshold": op["threshold"], "test": op} if marked else None, title=f"ROC, {what} ({m['n']} images)")
    return ["confusion.png", "calibration.png", "roc.png"]


def run_subgroups(config: dict) -> tuple[str, ...] | None:
    """The --subgroups a run was trained with (from its recorded command); None: the default columns."""
    command = [str(c) for c in config.get("command") or []]
    if "--subgroups" in command[:-1]:
        return parse_subgroups(command[command.index("--subgroups") + 1])
    return None


def _external_rows(run_dir: Path, config: dict, data: CacheData, path: Path, own: Path, names: list[str],
                   class_map: ClassMap | None, memory_gb: float, keep_overlap: bool):
    """(data in the run's classes, split, rows to evaluate, training labels or None, notes, overlap, overlapping
    rows) of an external cache: every labeled image of a class the run knows, less those it trained or validated on
    or near copies of them (unless `keep_overlap`)."""
    notes = []
    cmap, strict, how = external_map(config, data, class_map)
    notes += [how] if how else []
    data = map_classes(data, cmap, names, strict=strict, require_rows=False)
    y = data.labels
    rows = np.flatnonzero(y >= 0)
    split = np.full(len(y), "external", dtype=object)
    if len(rows) == 0:
        raise InputError(f"no labeled image of {path} has a class the run knows ({', '.join(names)}); its "
                         f"classes are {', '.join(data.class_map['source_classes']) or 'none'}: map them with "
                         "--class-map 'RUNCLASS=CACHECLASS,...'")
    overlap, found, y_train, more = check_external(run_dir, own, names, run_task(config), data, rows, memory_gb,
                                                   keep_overlap)
    notes += more
    if found and not keep_overlap:
        rows = np.setdiff1d(rows, [f["row"] for f in found])
        if len(rows) == 0:
            raise InputError(overlap.message(path.name, refused=True) + "; nothing is left to evaluate: pass a cache "
                             "of images the run never saw, or --keep-overlap to evaluate them all the same")
    return data, split, rows, y_train, notes, overlap, found


def _own_test_rows(run_dir: Path, config: dict, data: CacheData, path: Path, names: list[str],
                   class_map: ClassMap | None):
    """(data in the run's classes, split, rows to evaluate, training labels, notes) of the run's own cache: the
    labeled images of its test split, by image id (the cache may have changed since)."""
    notes = []
    if sha256_file(path) != config["cache"]["sha256"]:
        notes.append("the cache changed since the run was trained (new rows or labels); "
                     "the test split is the run's own, by image id")
    data = map_classes(data, class_map or run_task(config), names, strict=class_map is not None,
                       require_rows=False)
    split, _ = load_split(run_dir, data.image_ids)
    y = data.labels
    rows = np.flatnonzero((split == "test") & (y >= 0))
    if len(rows) == 0:
        raise InputError(f"run {run_dir} has no labeled test images in {path} (a `--folds K --test 0` run has no test "
                         "split: its out-of-fold figures are in its report); evaluate it on other data with "
                         "--cache OTHER.h5")
    y_train = y[(split == "train") & (y >= 0)]
    return data, split, rows, y_train, notes


def served_figures(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, meta: dict, names: list[str],
                   metrics: dict, rule: DecisionRule, positive: int | None, seed: int,
                   subgroups: tuple[str, ...] | None = None) -> dict:
    """Intervals of the headline metrics (into `metrics`), calibration figures, the run's operating point and the
    subgroup tables on these images, as an evaluation record's fields.

    Calibration: before = the head's own probabilities (the run's calibration undone from `proba`, so both recompute
    from predictions.csv and config.json), after = `proba` when the run's calibration was applied."""
    units = resampling_units(groups)
    pred = decide(proba, rule.decision_weights)
    metrics["intervals"] = metric_intervals(y, proba, pred, names, metrics, units, seed, positive)
    before = rule.calibration.undo(proba) if rule.calibrated else proba
    out = {"bootstrap": bootstrap_record(units, groups, seed),
           "calibration": calibration_figures(y, before, proba if rule.calibrated else None)}
    flagged = None
    if positive is not None and rule.threshold is not None and names[positive] == rule.positive:
        flagged = proba[:, positive] >= rule.threshold
        out["operating_point"] = {"positive": rule.positive, "threshold": rule.threshold,
                                  "positives": int((y == positive).sum()),
                                  **bootstrap(binary_stats(y, flagged, positive), None, units, seed,
                                              support=binary_support(y, flagged, positive, units))}
    columns = subgroup_columns(meta, None) if subgroups is None else [c for c in subgroups if c in meta]
    out["subgroups"] = {"columns": columns, "at": "operating point" if flagged is not None else "argmax",
                        "tables": {c: subgroup_table(c, meta[c], y, pred, flagged, groups, positive, seed,
                                                     class_names=names) for c in columns}}
    missing = [c for c in subgroups or () if c not in meta]
    if missing or not columns:
        out["subgroups"]["note"] = (
            f"the run's subgroup columns {', '.join(missing)} are not in the evaluated cache" if missing else
            "the run was trained with --subgroups none" if subgroups == () else
            "the evaluated cache stores no sex, age, body-site or dataset column; extract it with --metadata CSV "
            "to get subgroup results")
    return out
