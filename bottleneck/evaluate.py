"""`bottleneck evaluate RUN [--cache OTHER]`: a trained head on its own test split or on an external cache."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .cache import CacheConfig
from .errors import CacheMismatchError, InputError
from .feature_store import GIB, features_record, is_streamed, load_cache_within, resolve_memory_gb, take
from .files import sha256_file, write_json_atomic
from .heads import predict_proba
from .metrics import compute_metrics
from .plots import plot_confusion
from .rundir import load_run, predictions_frame, staged
from .runs import require_views, tta_proba
from .splits import load_split


@dataclass
class EvalResult:
    out_dir: Path
    metrics: dict
    cache: Path
    external: bool
    unmapped: dict = field(default_factory=dict)  # class name in the cache -> images left out
    notes: list = field(default_factory=list)


def map_classes(run_classes: list[str], cache_classes: list[str]) -> tuple[np.ndarray, dict]:
    """Index map cache class -> run class (-1 when none), by exact name, then case-insensitively."""
    exact = {n: i for i, n in enumerate(run_classes)}
    folded = {n.casefold(): i for i, n in enumerate(run_classes)}
    mapping = np.array([exact.get(n, folded.get(n.casefold(), -1)) for n in cache_classes], dtype=np.int64)
    return mapping, {n: i for n, i in zip(cache_classes, mapping) if i < 0}


def evaluate_run(run_dir: str | Path, cache: str | Path | None = None, tta: bool = False,
                 memory_gb: float | None = None) -> EvalResult:
    """The run's head on its own test split, or on every labeled image of another cache (external data);
    written to RUN/eval-test/ or RUN/eval-<cache>/, replacing the previous evaluation of the same data.

    memory_gb: features beyond it are streamed from the cache (None: default_memory_gb())."""
    memory_gb = resolve_memory_gb(memory_gb)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run {run_dir} does not exist; pass a directory made by `bottleneck train-head`")
    config, model = load_run(run_dir)
    names = config["cache"]["class_names"]
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
    notes, unmapped_counts = [], {}
    y_train = None
    if external:
        mapping, unmapped = map_classes(names, data.class_names)
        y = np.where(data.labels >= 0, mapping[np.maximum(data.labels, 0)], -1)
        rows = np.flatnonzero(y >= 0)
        unmapped_counts = {n: int((data.labels == data.class_names.index(n)).sum()) for n in unmapped}
        split = np.full(len(y), "external", dtype=object)
        if len(rows) == 0:
            raise InputError(f"no labeled image of {path} has a class the run knows ({', '.join(names)}); "
                             f"its classes are {', '.join(data.class_names) or 'none'}")
    else:
        if sha256_file(path) != config["cache"]["sha256"]:
            notes.append("the cache changed since the run was trained (new rows or labels); "
                         "the test split is the run's own, by image id")
        split, _ = load_split(run_dir, data.image_ids)
        y = data.labels
        rows = np.flatnonzero((split == "test") & (y >= 0))
        y_train = y[(split == "train") & (y >= 0)]
    proba = predict_proba(model, take(data.features, rows))
    if tta:
        require_views(data, rows)
        held = 0 if is_streamed(data.features) else data.features.nbytes / GIB  # one budget with the features
        proba = tta_proba(model, data, rows, proba, max(0.0, memory_gb - held))
        notes.append(f"probabilities averaged over the plain view and {data.n_views} stored views (TTA)")
    metrics = compute_metrics(y[rows], proba, names, train_labels=y_train)

    out = run_dir / ("eval-" + (path.stem if external else "test"))
    with staged(out, overwrite=True) as tmp:  # an evaluation is derived: the newest replaces the last
        write_json_atomic(tmp / "metrics.json", {"cache": str(path.resolve()), "external": external, "tta": tta,
                                                 "unmapped_classes": unmapped_counts, "notes": notes,
                                                 "features": features_record(data.features, memory_gb),
                                                 "metrics": metrics})
        shown = data if not external else replace(data, labels=y.astype(np.int32))  # labels in the run's classes
        predictions_frame(shown, split, proba, rows, names).to_csv(tmp / "predictions.csv", index=False)
        plot_confusion(metrics["confusion_matrix"], names, tmp / "confusion.png",
                       title=f"{'external: ' + path.stem if external else 'test split'}, {metrics['n']} images")
    return EvalResult(out, metrics, path, external, unmapped_counts, notes)
