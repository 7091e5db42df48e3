"""`bottleneck sweep`: many heads off one cache load, in one process, with one split and a leaderboard.

Selection only ever looks at validation data (the val split, or K grouped folds of train+val); the
test split is used once, by the winner, after it is retrained on train+val. Early stopping watches a grouped
slice of the training rows (`early_stopping_slice` in heads/splits.py), never the rows being scored: a fold (or a
val split) that picked its own best epoch would score itself optimistically. The configurations come from the grid
(`grid.py`); the ranking and the winner's choice are `leaderboard.py`'s.

    out/sweep.json            what the sweep is bound to (cache SHA-256, split, folds, metric)
    out/split.csv             the one split of the whole sweep
    out/configs/<id>/         result.json (+ history.csv) per configuration: the unit of resumption
    out/leaderboard.csv|.md   ranked by the chosen metric
    out/best/                 the winner retrained on train+val, evaluated on test: a full run directory
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cache import GIB, CacheData, features_fit, is_streamed, load_cache_within, read_views, resolve_memory_gb, take
from ..errors import InputError
from ..heads import (
    EARLY_STOP_FRACTION,
    ClassMap,
    HeadConfig,
    SplitSpec,
    TrainedHead,
    cv_parts,
    fit_head,
    load_split,
    make_folds,
    map_classes,
    predict_proba,
    recorded_groups,
    save_split,
)
from ..stats import compute_metrics
from ..util import sha256_file, write_json_atomic
from .directory import write_history
from .grid import config_id
from .leaderboard import METRICS, choose_winner, format_leaderboard, metric_score, write_leaderboard
from .train import RunOptions, fit_and_write, resolve_split, task_map
from .views import require_views, tta_proba


def fit_part(x, y: np.ndarray, part: tuple[np.ndarray, np.ndarray, np.ndarray], num_classes: int,
             cfg: HeadConfig) -> tuple[TrainedHead, np.ndarray]:
    """Train on part's fit rows, early-stop on its stop rows; (head, probabilities (n, C) of its scored rows).
    The scored rows' labels are never read here."""
    fit, stop, scored = part
    trained = fit_head(take(x, fit), y[fit], take(x, stop), y[stop], num_classes, cfg)
    return trained, predict_proba(trained.model, take(x, scored))


@dataclass(frozen=True)
class SweepOptions:
    out: Path | None = None  # default: runs/sweep-<cache name>
    folds: int = 0
    metric: str = "balanced_accuracy"
    split: SplitSpec = SplitSpec()
    split_from: Path | None = None
    progress: bool = True
    tta: bool = False  # score validation with probabilities averaged over the stored views
    memory_gb: float | None = None  # features (then views) beyond this are streamed; None: default_memory_gb()
    class_map: ClassMap | None = None  # the task (class_map.py); None: the cache's classes, or --split-from's map
    duplicates: str = "group"  # --duplicates: near-duplicates across groups joined before splitting, reported, or not


def _bind(out: Path, data: CacheData, opts: SweepOptions) -> tuple[np.ndarray, np.ndarray | None, CacheData]:
    """Create or reopen the sweep directory; a directory made for another cache or protocol is refused. Returns the
    split, the folds and the data with the groups the split was made with (near-duplicates joined: the folds and
    early-stopping slices keep them together too)."""
    identity = {"cache": str(data.path.resolve()), "cache_sha256": sha256_file(data.path), "folds": opts.folds,
                "split_seed": opts.split.seed, "fractions": list(opts.split.fractions()),
                "split_from": str(opts.split_from) if opts.split_from else None, "tta": opts.tta,
                # the SPEC binds as before; a map a SPEC cannot hold is bound by its structure
                "class_map": None if not opts.class_map else opts.class_map.spec if opts.class_map.inline
                else opts.class_map.to_record()["targets"],
                # Scores from before early stopping moved off the scored rows are not comparable: refused.
                "cv_early_stopping": f"grouped {EARLY_STOP_FRACTION:g} of the training "
                                     + ("folds" if opts.folds else "split")}
    meta = out / "sweep.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        diff = [k for k in identity if old.get(k) != identity[k]]
        if diff:
            raise InputError(f"sweep directory {out} was made with another {', '.join(diff)} "
                             f"({old.get(diff[0])!r} there, {identity[diff[0]]!r} now); pass another --out")
        split, _ = load_split(out, data.image_ids)
    else:
        out.mkdir(parents=True, exist_ok=True)
        split, info = resolve_split(data, opts.split, opts.split_from, opts.duplicates)
        save_split(out / "split.csv", data.image_ids, split)
        write_json_atomic(meta, identity | {"duplicates": info["duplicates"]})  # recorded, not part of the binding
    grouped = replace(data, groups=recorded_groups(out, data))
    folds = make_folds(grouped, split, opts.folds, opts.split.seed) if opts.folds else None
    return split, folds, grouped


def evaluate_config(data: CacheData, split: np.ndarray, folds: np.ndarray | None, cfg: HeadConfig,
                    views: np.ndarray | None = None, tta_stream_gb: float | None = None, seed: int = 0) -> dict:
    """Validation scores of one configuration: on the val split, or mean/std over the K folds (`cv_parts`;
    `seed` picks each fold's early-stopping slice).

    TTA: with `views` loaded (N, V, D), or, when they did not fit, read from the cache `tta_stream_gb` GiB at a
    time (`tta_proba`)."""
    x, y = data.features, data.labels
    per_fold, history = [], None
    start = time.perf_counter()
    for fit, stop, held in cv_parts(data, split, folds, seed):
        trained, proba = fit_part(x, y, (fit, stop, held), len(data.class_names), cfg)
        history = history or trained.history
        if views is not None:  # TTA: mean over the plain view and every stored view
            proba = (proba + sum(predict_proba(trained.model, views[held, k]) for k in range(views.shape[1]))) \
                / (views.shape[1] + 1)
        elif tta_stream_gb is not None:
            proba = tta_proba(trained.model, data, held, proba, tta_stream_gb)
        m = compute_metrics(y[held], proba, data.class_names, train_labels=y[fit])
        per_fold.append({"n": m["n"], "n_fit": int(len(fit)), "n_early_stopping": int(len(stop)),
                         "best_epoch": trained.best_epoch,
                         **{k: metric_score(m, k) for k in METRICS}})
    return {"id": config_id(cfg), "config": cfg.to_dict(), "folds": per_fold, "summary": fold_summary(per_fold),
            "seconds": time.perf_counter() - start, "streamed": is_streamed(x), "history": history}


def fold_summary(per_fold: list[dict]) -> dict:
    """Per metric (and best epoch): the mean over folds, the sample standard deviation (ddof=1: the folds are a
    sample of the splits that could have been drawn) and the number of folds it rests on; no spread from one."""
    summary = {}
    for k in METRICS + ("best_epoch",):
        vals = [p[k] for p in per_fold if p.get(k) is not None]
        summary[k] = {"mean": float(np.mean(vals)) if vals else None,
                      "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "n": len(vals)}
    return summary


@dataclass
class SweepResult:
    out: Path
    leaderboard: list[dict]
    computed: int
    skipped: int
    best_dir: Path | None
    best_metrics: dict | None
    class_map: dict | None = None  # class_map.map_classes's record when a --class-map defined the task
    winner: str | None = None  # the configuration retrained as best (see choose_winner)
    selection: str = ""  # how it was chosen, in words


def run_sweep(cache: str | Path, configs: list[HeadConfig], opts: SweepOptions) -> SweepResult:
    """Score every configuration off one cache load (resuming a sweep directory), rank them, and retrain the
    winner on train+val to test it once."""
    if opts.metric not in METRICS:
        raise InputError(f"--metric should be one of {', '.join(METRICS)}; received {opts.metric!r}")
    if opts.folds == 1 or opts.folds < 0:
        raise InputError(f"--folds should be 0 (use the val split) or at least 2; received {opts.folds}")
    if not configs:
        raise InputError("the grid is empty; give values with --lr/--dropout/... or --grid FILE.toml")
    opts = replace(opts, memory_gb=resolve_memory_gb(opts.memory_gb))
    opts = replace(opts, class_map=task_map(opts.class_map, opts.split_from))
    data = map_classes(load_cache_within(cache, opts.memory_gb), opts.class_map)  # once for the whole sweep
    out = Path(opts.out) if opts.out else Path("runs") / f"sweep-{Path(cache).stem}"
    split, folds, grouped = _bind(out, data, opts)
    views, tta_stream_gb = None, None
    if opts.tta:
        require_views(data, np.flatnonzero(split != ""))
        # One budget: the views get what the features in memory leave of it.
        left = opts.memory_gb - (0 if is_streamed(data.features) else data.features.nbytes / GIB)
        if features_fit(len(data.labels), data.n_views * data.config.num_features, left):
            views = read_views(data.path)  # (N, V, D), once for the whole sweep
        else:
            tta_stream_gb = max(0.0, left)
    results, computed, skipped = [], 0, 0
    for cfg in tqdm(configs, desc="sweep", unit="config", disable=not opts.progress):
        cdir = out / "configs" / config_id(cfg)
        done = cdir / "result.json"
        if done.is_file():
            res = json.loads(done.read_text())
            res["summary"] = fold_summary(res["folds"])  # from the fold scores: a result of an older version too
            results.append(res)
            skipped += 1
            continue
        res = evaluate_config(grouped, split, folds, cfg, views, tta_stream_gb, seed=opts.split.seed)
        cdir.mkdir(parents=True, exist_ok=True)
        write_history(cdir / "history.csv", res.pop("history"))
        write_json_atomic(done, res)  # written last: a config is finished exactly when this file exists
        results.append(res)
        computed += 1

    board = write_leaderboard(results, opts.metric, out)
    winner, how = choose_winner(board, opts.metric)
    (out / "leaderboard.md").write_text(format_leaderboard(board, opts.metric) + f"\n\nWinner: {how}.\n",
                                        encoding="utf-8")
    best_dir, best_metrics = None, None
    if winner is not None:
        best_dir, best_metrics = _final_fit(data, split, out, results, winner, opts, how)
    return SweepResult(out, board, computed, skipped, best_dir, best_metrics, data.class_map, winner, how)


def _final_fit(data, split, out: Path, results, best_id: str, opts: SweepOptions, how: str = ""):
    """Retrain the winner on train+val for its mean best epoch count, evaluate once on test."""
    best = next(r for r in results if r["id"] == best_id)
    best_dir = out / "best"
    cfg_path = best_dir / "config.json"
    if cfg_path.is_file() and json.loads(cfg_path.read_text()).get("sweep_config_id") == best_id:
        return best_dir, json.loads((best_dir / "metrics.json").read_text())
    cfg = HeadConfig(**{k: (tuple(v) if k == "hidden" else v) for k, v in best["config"].items()
                        if k in {f.name for f in fields(HeadConfig)}})
    epochs = max(1, int(round(best["summary"]["best_epoch"]["mean"])))
    run_opts = RunOptions(overwrite=True, progress=opts.progress, tta=opts.tta, memory_gb=opts.memory_gb)
    r = fit_and_write(data, split, json.loads((out / "sweep.json").read_text()) | {"from": str(out)},
                      replace(cfg, epochs=epochs), best_dir, run_opts,
                      command=["bottleneck", "sweep", str(data.path), "--out", str(out), "--duplicates",
                               opts.duplicates] + (["--class-map", opts.class_map.argument] if opts.class_map else []),
                      final=True,
                      extra_config={"sweep": str(out), "sweep_config_id": best_id, "selected_by": opts.metric,
                                    "selection": how,
                                    "validation": best["summary"]})
    return r.run_dir, r.metrics
