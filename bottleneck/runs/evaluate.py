"""`bottleneck evaluate RUN [--cache OTHER]`: a trained head on its own test split or on an external cache.

An external cache is checked against the run's training and validation images first: an image with the same
bytes (SHA-256), or of a lesion the head was trained on, would flatter the result, so it is left out and counted.
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
    load_cache,
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
    predict_proba,
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
    positive_index,
    resampling_units,
)
from ..util import csv_unescape, finite_or_null, sha256_file, write_csv, write_json_atomic
from .directory import load_run, restore_interrupted, staged, write_predictions
from .plots import plot_confusion
from .report import write_eval_report
from .train import require_views, tta_proba

LEAKING = ("train", "val")  # the splits a head learned from (val picks the epoch; a final fit trains on it)
# Sources whose group ids name lesions in one namespace: ISIC 2019's lesion_id column reuses HAM10000's ids.
SHARED_LESION_IDS = {"ham10000", "isic2019"}
NO_GROUPS = {"", "folders", "unlabeled"}


@dataclass
class Overlap:
    """External images that are also among the run's training or validation data (left out of the metrics)."""

    checked: bool
    candidates: int = 0  # labeled images of a class the run knows, before the check
    same_bytes: int = 0
    same_lesion: int = 0
    lesions_compared: bool = False
    reason: str = ""  # why the check, or the lesion comparison, was not done

    @property
    def excluded(self) -> int:
        return self.same_bytes + self.same_lesion

    def message(self, name: str) -> str:
        if not self.checked:
            return f"the overlap of {name} with this run's training data could not be checked: {self.reason}"
        how = f"same bytes: {self.same_bytes:,}" + (f", same lesion: {self.same_lesion:,}" if self.lesions_compared
                                                     else f"; lesion ids not compared: {self.reason}")
        if not self.excluded:
            return (f"none of the {self.candidates:,} images of {name} is in this run's training or validation data "
                    f"({how})")
        return (f"{self.excluded:,} of {self.candidates:,} images of {name} are in this run's training or validation "
                f"data ({how}) and were left out")

    def record(self) -> dict:
        return {"checked": self.checked, "candidates": self.candidates, "excluded": self.excluded,
                "same_bytes": self.same_bytes, "same_lesion": self.same_lesion,
                "lesions_compared": self.lesions_compared, "reason": self.reason}


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


def run_split(run_dir: Path, data: CacheData) -> tuple[np.ndarray, int]:
    """(split of each row of the run's training cache, train/val images of split.csv no longer in it).

    Unlike a reused split, a cache that lost rows since the run is read anyway: the rest can still be checked."""
    import pandas as pd

    path = run_dir / "split.csv"
    if not path.is_file():
        raise InputError(f"{run_dir} has no split.csv; pass a run directory made by `bottleneck train-head`")
    df = csv_unescape(pd.read_csv(path, dtype=str, keep_default_na=False))  # ids as the cache holds them
    mapping = dict(zip(df["image_id"], df["split"]))
    split = np.array([mapping.get(i, "") for i in data.image_ids], dtype=object)
    leaking = set(df["image_id"][df["split"].isin(LEAKING)])
    return split, len(leaking - set(data.image_ids))


def lesion_ids_comparable(train_attrs: dict, other_attrs: dict) -> tuple[bool, str]:
    """Whether a group id of one cache names the same lesion as the same id in the other."""
    a, b = str(train_attrs.get("source", "")), str(other_attrs.get("source", ""))
    if a in NO_GROUPS or b in NO_GROUPS:
        return False, f"the caches' sources ({a or 'unknown'}, {b or 'unknown'}) record no lesion ids"
    if a == b == "csv":  # a user-chosen column: only the same data set's ids mean the same thing
        same = train_attrs.get("dataset") == other_attrs.get("dataset")
        return same, "" if same else "group columns of two different CSV data sets"
    if a == b or {a, b} <= SHARED_LESION_IDS:
        return True, ""
    return False, f"sources {a} and {b} name lesions differently"


def find_overlap(train: CacheData, train_split: np.ndarray, other: CacheData,
                 rows: np.ndarray) -> tuple[Overlap, list[dict]]:
    """Which of `rows` of `other` have the bytes, or the lesion, of a training or validation row of `train`.

    Returns the counts and one dict per overlapping row (image_id, path, reason, the training row it matches)."""
    leak = np.isin(train_split, LEAKING)
    by_sha = {s: i for s, i in zip(train.sha256[leak], train.image_ids[leak]) if s}
    ok, reason = lesion_ids_comparable(train.attrs, other.attrs)
    by_group = {g: g for g in train.groups[leak] if g} if ok else {}
    if ok and not by_group:
        ok, reason = False, "the run's training cache has no group ids"
    elif ok and not any(other.groups[rows]):
        ok, reason = False, f"{other.path.name} has no group ids"
    overlap = Overlap(checked=True, candidates=len(rows), lesions_compared=ok, reason=reason)
    found = []
    for r in rows:
        sha, group = other.sha256[r], other.groups[r]
        if sha and sha in by_sha:
            overlap.same_bytes += 1
            found.append({"image_id": other.image_ids[r], "path": other.paths[r], "reason": "same bytes",
                          "matches": by_sha[sha], "row": int(r)})
        elif group and group in by_group:
            overlap.same_lesion += 1
            found.append({"image_id": other.image_ids[r], "path": other.paths[r], "reason": "same lesion",
                          "matches": group, "row": int(r)})
    return overlap, found


def _check_external(run_dir: Path, own: Path, names: list[str], task: ClassMap, data: CacheData,
                    rows: np.ndarray) -> tuple[Overlap, list[dict], np.ndarray | None, list[str]]:
    """(overlap, overlapping rows, training labels in the run's classes or None, notes) of an external cache."""
    if not own.is_file():
        return (Overlap(False, len(rows), reason=f"its training cache {own} no longer exists; the majority "
                        "baseline is the evaluated images' majority class"), [], None, [])
    # ids, hashes, groups and labels (in the run's classes): no features needed
    train = map_classes(load_cache(own, features=False), task, names, strict=False, require_rows=False)
    split, gone = run_split(run_dir, train)
    overlap, found = find_overlap(train, split, data, rows)
    notes = [f"{gone} training/validation images of the run are no longer in {own.name}; they could not be "
             "checked for overlap"] if gone else []
    y_train = train.labels[(split == "train") & (train.labels >= 0)]
    return overlap, found, (y_train if len(y_train) else None), notes


def evaluate_run(run_dir: str | Path, cache: str | Path | None = None, tta: bool = False,
                 memory_gb: float | None = None, class_map: ClassMap | None = None,
                 calibrate: bool = True) -> EvalResult:
    """The run's head on its own test split, or on every labeled image of another cache (external data) that the
    run did not train or validate on; written to RUN/eval-test/ or RUN/eval-<cache>/, replacing the previous
    evaluation of the same data.

    memory_gb: features beyond it are streamed from the cache (None: default_memory_gb()). class_map: how the
    cache's classes become the run's (targets are the run's classes); by default the run's own map, or by name.
    calibrate=False: the head's own probabilities, without the run's calibration (and its decision weights)."""
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
    data = load_cache_within(path, memory_gb)
    diff = trained_on.mismatch(data.config)
    if diff:
        raise CacheMismatchError(f"cache {path} comes from another backbone configuration than run {run_dir}: "
                                 f"{diff.replace('(cache)', f'({path.name})').replace('(this run)', '(run)')}; "
                                 "extract that data with the run's configuration first")
    external = cache is not None and path.resolve() != own.resolve()
    if external:
        data, split, rows, y_train, notes, overlap, found = _external_rows(run_dir, config, data, path, own, names,
                                                                           class_map)
    else:
        data, split, rows, y_train, notes = _own_test_rows(run_dir, config, data, path, names, class_map)
        overlap, found = None, []
    y = data.labels
    proba = predict_proba(model, take(data.features, rows))
    if tta:
        require_views(data, rows)
        held = 0 if is_streamed(data.features) else data.features.nbytes / GIB  # one budget with the features
        proba = tta_proba(model, data, rows, proba, max(0.0, memory_gb - held))
        notes.append(f"probabilities averaged over the plain view and {data.n_views} stored views (TTA)")
    positive = names.index(rule.positive) if rule.positive in names else positive_index(names, None)
    metrics = compute_metrics(y[rows], proba, names, train_labels=y_train, decision_weights=rule.decision_weights,
                              positive=positive)
    clinical = served_figures(y[rows], proba, data.groups[rows], names, metrics, rule, positive,
                              int(config["head"]["seed"]))
    baseline_from = "training" if y_train is not None else "evaluated"

    out = run_dir / ("eval-" + (path.stem if external else "test"))
    unmapped_counts = data.class_map["dropped"]
    by_names = data.class_map["targets"] == by_name(names).to_record()["targets"]
    shown_map = None if by_names else data.class_map  # a map, not names
    record = {"cache": str(path.resolve()), "external": external, "tta": tta, "class_map": shown_map,
              "unmapped_classes": unmapped_counts, "notes": notes,
              "features": features_record(data.features, memory_gb),
              # the baseline predicts the majority class of the run's training split when it can be read
              "majority_baseline_from": baseline_from, "decision_rule": rule.record(), **clinical}
    if external:
        record |= {"overlap_checked": overlap.checked, "overlap": overlap.record(),
                   "overlap_message": overlap.message(path.name)}
    record["metrics"] = metrics
    with staged(out, overwrite=True) as tmp:  # an evaluation is derived: the newest replaces the last
        write_json_atomic(tmp / "metrics.json", finite_or_null(record))  # undefined figures: null
        write_predictions(tmp / "predictions.csv", data, split, proba, rows, names, rule.decision_weights)
        if found:
            _write_excluded(tmp / "excluded.csv", found)
        plot_confusion(metrics["confusion_matrix"], names, tmp / "confusion.png",
                       title=f"{'external: ' + path.stem if external else 'test split'}, {metrics['n']} images")
        write_eval_report(tmp / "report.md", config, record, run_dir.name, out.name)
    return EvalResult(out, metrics, path, external, unmapped_counts, notes, overlap, baseline_from, shown_map)


def _external_rows(run_dir: Path, config: dict, data: CacheData, path: Path, own: Path, names: list[str],
                   class_map: ClassMap | None):
    """(data in the run's classes, split, rows to evaluate, training labels or None, notes, overlap, overlapping
    rows) of an external cache: every labeled image of a class the run knows, less those it trained or validated on."""
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
    overlap, found, y_train, more = _check_external(run_dir, own, names, run_task(config), data, rows)
    notes += more
    if found:
        rows = np.setdiff1d(rows, [f["row"] for f in found])
        if len(rows) == 0:
            raise InputError(overlap.message(path.name).replace(" and were left out", "")
                             + "; nothing is left to evaluate: pass a cache of images the run never saw")
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
    y_train = y[(split == "train") & (y >= 0)]
    return data, split, rows, y_train, notes


def served_figures(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, names: list[str], metrics: dict,
                   rule: DecisionRule, positive: int | None, seed: int) -> dict:
    """Intervals of the headline metrics (into `metrics`), calibration figures and the run's operating point on
    these images, as an evaluation record's fields."""
    units = resampling_units(groups)
    metrics["intervals"] = metric_intervals(y, proba, decide(proba, rule.decision_weights), names, metrics, units,
                                            seed, positive)
    out = {"bootstrap": bootstrap_record(units, groups, seed), "calibration": calibration_figures(y, proba, None)}
    if positive is not None and rule.threshold is not None and names[positive] == rule.positive:
        flagged = proba[:, positive] >= rule.threshold
        out["operating_point"] = {"positive": rule.positive, "threshold": rule.threshold,
                                  "positives": int((y == positive).sum()),
                                  **bootstrap(binary_stats(y, flagged, positive), None, units, seed,
                                              support=binary_support(y, flagged, positive, units))}
    return out


def _write_excluded(path: Path, found: list[dict]) -> None:
    """excluded.csv: each external image left out, why, and the training image id (same bytes) or lesion id."""
    import pandas as pd

    write_csv(path, pd.DataFrame(found).drop(columns="row"))
