"""`train-head` and `evaluate`: a head trained off a cache, its split, metrics and report in `runs/<name>/`.

A run directory is written whole or not at all: artifacts go to a hidden temporary folder that is renamed
into place at the end, so a failed or interrupted command never leaves a half run or damages an old one.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backbones import file_sha256
from .cache import CacheData, load_cache, library_versions
from .errors import InputError
from .heads import HeadConfig, predict_proba, train_head
from .splits import SPLITS, SplitSpec, check_split, load_split, make_split, save_split
from .tfimport import tensorflow

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
    views_memory_gb: float = 2.0  # views larger than this are streamed from the cache, not loaded


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # split -> compute_metrics dict
    split_sizes: dict
    best_epoch: int
    seconds: float
    extra: dict = field(default_factory=dict)


sha256_file = file_sha256  # the cache's provenance in config.json, hashed like weights files


def _epoch_bar(total: int, enabled: bool, desc: str = "train-head"):
    """A tqdm bar over epochs (with epochs/s) showing the current losses."""
    tensorflow()
    import keras
    from tqdm.auto import tqdm

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=False)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.set_postfix({k: f"{logs[k]:.3f}" for k in ("loss", "val_loss") if k in logs})
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochBar()


def _prepare_dir(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise InputError(f"run directory {out} already exists; pass --overwrite to replace it or another --out")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _check_usable(data: CacheData) -> None:
    if len(data.labels) == 0:
        raise InputError(f"cache {data.path} is empty (0 rows); run `bottleneck extract` into it first")


def _cache_record(data: CacheData) -> dict:
    return {"path": str(data.path.resolve()), "sha256": sha256_file(data.path), "config": asdict(data.config),
            "rows": int(len(data.labels)), "class_names": data.class_names,
            "dataset": data.attrs.get("dataset", ""), "root": data.attrs.get("root", "")}


def _predictions_frame(data: CacheData, split: np.ndarray, proba: np.ndarray, rows: np.ndarray, class_names):
    import pandas as pd

    labels = data.labels[rows]
    df = pd.DataFrame({"image_id": data.image_ids[rows], "path": data.paths[rows], "group": data.groups[rows],
                       "split": split[rows],
                       "true": [class_names[i] if i >= 0 else "" for i in labels],
                       "predicted": [class_names[i] for i in proba.argmax(axis=1)]})
    for j, name in enumerate(class_names):
        df[f"p_{name}"] = np.round(proba[:, j], 6)
    return df


def _evaluate_splits(y: np.ndarray, proba: np.ndarray, split_of_rows: np.ndarray, class_names, y_train,
                     splits=EVAL_SPLITS) -> dict:
    from .metrics import compute_metrics

    out = {}
    for s in splits:
        m = split_of_rows == s
        if m.any():
            out[s] = compute_metrics(y[m], proba[m], class_names, train_labels=y_train)
    return out


def train_head_run(cache: str | Path, head: HeadConfig = HeadConfig(), opts: RunOptions = RunOptions(),
                   command: list[str] | None = None) -> RunResult:
    """Train a head off `cache`, evaluate it on validation and test, and write a run directory."""
    head.validate()
    cache = Path(cache)
    out = Path(opts.out) if opts.out else opts.runs_dir / f"{cache.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not opts.overwrite:  # before loading anything: fail fast and touch nothing
        raise InputError(f"run directory {out} already exists; pass --overwrite to replace it or another --out")
    data = load_cache(cache)
    split, split_info = resolve_split(data, opts.split, opts.split_from)
    command = [str(out) if c == "<out>" else c for c in (command or ["bottleneck", "train-head", str(cache)])]
    return fit_and_write(data, split, split_info, head, out, overwrite=opts.overwrite, progress=opts.progress,
                         command=command, augment=opts.augment, tta=opts.tta,
                         views_memory_gb=opts.views_memory_gb)


def resolve_split(data: CacheData, spec: SplitSpec, split_from: Path | None) -> tuple[np.ndarray, dict]:
    """The split of a run: made from the seed, or reused from an earlier run; checked either way."""
    _check_usable(data)
    info = {"fractions": [spec.train, spec.val, spec.test], "seed": spec.seed,
            "from": str(split_from) if split_from else None}
    if split_from:
        split, extra = load_split(split_from, data.image_ids)
        split[data.labels < 0] = ""
        info.update(extra)
    else:
        split = make_split(data.labels, data.groups, data.image_ids, data.class_names, spec)
    check_split(split, data.labels, data.groups, data.class_names)
    return split, info


def fit_and_write(data: CacheData, split: np.ndarray, split_info: dict, head: HeadConfig, out: Path, *,
                  overwrite: bool = False, progress: bool = True, command: list[str] = (),
                  final: bool = False, extra_config: dict | None = None, augment: bool = False,
                  tta: bool = False, views_memory_gb: float = 2.0) -> RunResult:
    """Fit a head on the split and write the whole run directory atomically.

    final=False: train on train, early-stop on val, report val and test. final=True (a sweep's winner):
    train on train+val for exactly `head.epochs` epochs, report test only: val no longer held out.
    """
    from .plots import plot_confusion, plot_curves
    from .report import write_report

    names = data.class_names
    idx = {s: np.flatnonzero(split == s) for s in SPLITS}
    x, y = data.features, data.labels
    fit_rows = np.concatenate([idx["train"], idx["val"]]) if final else idx["train"]
    rows = np.concatenate([idx[s] for s in SPLITS])
    eval_splits = ("test",) if final else EVAL_SPLITS
    if augment or tta:
        require_views(data, fit_rows if augment else rows)
    tmp = _prepare_dir(out, overwrite)
    try:
        batches = (view_batches(data, fit_rows, head, views_memory_gb) if augment else None)
        trained = train_head(x[fit_rows], y[fit_rows], None if final else x[idx["val"]],
                             None if final else y[idx["val"]], len(names), head,
                             callbacks=[_epoch_bar(head.epochs, progress)], batches=batches)
        plain_proba = predict_proba(trained.model, x[rows])
        proba = tta_proba(trained.model, data, rows, plain_proba) if tta else plain_proba
        metrics = _evaluate_splits(y[rows], proba, split[rows], names, y[fit_rows], splits=eval_splits)
        if augment or tta:  # the effect of views, on the same split
            compare = {}
            if augment:
                base = train_head(x[fit_rows], y[fit_rows], None if final else x[idx["val"]],
                                  None if final else y[idx["val"]], len(names), head)
                compare["plain head (no views)"] = _evaluate_splits(
                    y[rows], predict_proba(base.model, x[rows]), split[rows], names, y[fit_rows], eval_splits)
            name = "this head" + (" (augment)" if augment else "")
            compare[f"{name}, plain view only"] = _evaluate_splits(y[rows], plain_proba, split[rows], names,
                                                                   y[fit_rows], eval_splits)
            if tta:
                compare[f"{name}, TTA over {data.n_views + 1} views"] = metrics_copy(metrics, eval_splits)
            metrics["views_comparison"] = compare
        fitted = np.isin(rows, fit_rows)
        metrics["train"] = {"n": int(len(fit_rows)),
                            "accuracy": float((proba[fitted].argmax(1) == y[rows][fitted]).mean())}
        sizes = {s: {"images": int(len(idx[s])), "groups": int(len({g for g in data.groups[idx[s]] if g})),
                     "per_class": {n: int((y[idx[s]] == c).sum()) for c, n in enumerate(names)}} for s in SPLITS}

        save_split(tmp / "split.csv", data.image_ids, split)
        _write_history(tmp / "history.csv", trained.history)
        _predictions_frame(data, split, proba, rows, names).to_csv(tmp / "predictions.csv", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        config = {"command": list(command), "cache": _cache_record(data), "head": head.to_dict(),
                  "split": {**split_info, "sizes": sizes}, "trained_on": "train+val" if final else "train",
                  "views": {"stored": data.n_views, "augment": augment, "tta": tta},
                  "best_epoch": trained.best_epoch, "epochs_run": len(trained.history["loss"]),
                  "train_seconds": round(trained.seconds, 3), "library_versions": library_versions(),
                  "python": sys.version.split()[0], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  **(extra_config or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        trained.model.save(tmp / "head.keras")
        plot_curves(trained.history, tmp / "curves.png")
        plot_confusion(metrics["test"]["confusion_matrix"], names, tmp / "confusion.png",
                       title=f"test split, {metrics['test']['n']} images")
        write_report(tmp / "report.md", config, metrics, out.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _finish_dir(tmp, out)
    return RunResult(out, metrics, sizes, trained.best_epoch, trained.seconds, split_info)


def metrics_copy(metrics: dict, splits) -> dict:
    return {s: metrics[s] for s in splits if s in metrics}


def require_views(data: CacheData, rows: np.ndarray) -> None:
    if data.n_views == 0:
        raise InputError(f"cache {data.path} holds no augmented views; add them with "
                         f"`bottleneck extract DATA --views 7 --cache {data.path}` (the plain vectors are kept)")
    missing = int((~data.views_ok[rows]).sum())
    if missing:
        raise InputError(f"{missing} images of cache {data.path} lack their {data.n_views} views (added after "
                         "the views were extracted); rerun the same extract command to complete them")


def view_batches(data: CacheData, rows: np.ndarray, head: HeadConfig, memory_gb: float):
    """--augment batches; the views are read into memory when they fit in `memory_gb`, else streamed."""
    import h5py

    from .cache import read_views
    from .views import view_sampler

    need = len(data.labels) * data.n_views * data.config.num_features * 4
    if need <= memory_gb * 2**30:
        views = read_views(data.path)
    else:  # the file stays open for the life of the sampler; each batch reads its own rows
        views = h5py.File(data.path, "r")["views"]
    return view_sampler(data.features, views, rows, data.labels, head.batch_size, head.seed)


def tta_proba(model, data: CacheData, rows: np.ndarray, plain_proba: np.ndarray) -> np.ndarray:
    """Mean probabilities over the plain view and every stored view of `rows`."""
    from .cache import read_views

    total = plain_proba.copy()
    views = read_views(data.path, rows)  # (n, V, D)
    for k in range(views.shape[1]):
        total += predict_proba(model, views[:, k])
    return total / (views.shape[1] + 1)


def _write_history(path: Path, history: dict) -> None:
    import pandas as pd

    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    df.to_csv(path, index=False)


def load_run(run_dir: str | Path) -> tuple[dict, object]:
    """(config.json, the head model) of a run directory."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file() or not (run_dir / "head.keras").is_file():
        raise InputError(f"{run_dir} is not a train-head run (no config.json / head.keras there)")
    tensorflow()
    import keras

    return json.loads(cfg_path.read_text()), keras.saving.load_model(run_dir / "head.keras")
