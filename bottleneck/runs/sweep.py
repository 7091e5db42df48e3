"""`bottleneck sweep`: many heads off one cache load, in one process, with one split and a leaderboard.

Selection only ever looks at validation data (the val split, or K grouped folds of train+val); the
test split is used once, by the winner, after it is retrained as train-head trains a head (on train, early-stopped,
calibrated and given an operating point on val). Early stopping watches a grouped
slice of the training rows (`early_stopping_slice` in heads/splits.py), never the rows being scored: a fold (or a
val split) that picked its own best epoch would score itself optimistically. The configurations come from the grid
(`grid.py`); the ranking and the winner's choice are `leaderboard.py`'s.

    out/sweep.json            what the sweep is bound to (cache SHA-256, split, folds, metric)
    out/split.csv             the one split of the whole sweep
    out/configs/<id>/         result.json (+ history.csv) per configuration: the unit of resumption
    out/leaderboard.csv|.md   ranked by the chosen metric
    out/best/                 the winner retrained on train (val: early stopping, calibration, operating point),
                              evaluated on test: a full run directory with train-head's report
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..cache import GIB, CacheData, features_fit, is_streamed, load_cache_within, read_views, resolve_memory_gb, take
from ..errors import InputError
from ..heads import (
    EARLY_STOP_FRACTION,
    ClassMap,
    HeadConfig,
    Part,
    SplitSpec,
    StackedHead,
    TrainedHead,
    cv_parts,
    fit_head,
    fit_stack,
    load_split,
    make_folds,
    map_classes,
    predict_proba,
    recorded_groups,
    save_split,
)
from ..stats import compute_metrics
from ..util import progress_bar, sha256_file, write_json_atomic
from .directory import write_history
from .grid import config_id, write_grid_toml
from .leaderboard import METRICS, choose_winner, format_leaderboard, metric_score, write_leaderboard
from .splitting import resolve_split
from .train import RunOptions, fit_and_write, task_map
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
    given_memory_gb: float | None = None  # --memory-gb as the user gave it (the rerun command holds only that)


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
        split, info, _ = resolve_split(data, opts.split, opts.split_from, opts.duplicates)
        save_split(out / "split.csv", data.image_ids, split)
        write_json_atomic(meta, identity | {"duplicates": info["duplicates"]})  # recorded, not part of the binding
    grouped = replace(data, groups=recorded_groups(out, data))
    folds = make_folds(grouped, split, opts.folds, opts.split.seed) if opts.folds else None
    return split, folds, grouped


def evaluate_config(data: CacheData, split: np.ndarray, folds: np.ndarray | None, cfg: HeadConfig,
                    views: np.ndarray | None = None, tta_stream_gb: float | None = None, seed: int = 0) -> dict:
    """Validation scores of one configuration: on the val split, or mean/std over the K folds (`cv_parts`;
    `seed` picks each fold's early-stopping slice).

    Features in memory: the K heads are trained at once (heads/stack.py: one traced graph, no per-fit cost);
    streamed: one Keras fit per fold. TTA: with `views` loaded (N, V, D), or, when they did not fit, read from the
    cache `tta_stream_gb` GiB at a time (`tta_proba`)."""
    x, y = data.features, data.labels
    per_fold, history = [], None
    start = time.perf_counter()
    parts = cv_parts(data, split, folds, seed)
    for (fit, stop, held), head in zip(parts, _fold_heads(x, y, parts, len(data.class_names), cfg)):
        history = history or head.history
        proba = head.proba(take(x, held))
        if views is not None:  # TTA: mean over the plain view and every stored view
            proba = (proba + sum(head.proba(views[held, k]) for k in range(views.shape[1]))) / (views.shape[1] + 1)
        elif tta_stream_gb is not None:
            proba = tta_proba(head.model(), data, held, proba, tta_stream_gb)
        m = compute_metrics(y[held], proba, data.class_names, train_labels=y[fit])
        per_fold.append({"n": m["n"], "n_fit": int(len(fit)), "n_early_stopping": int(len(stop)),
                         "best_epoch": head.best_epoch,
                         **{k: metric_score(m, k) for k in METRICS}})
    return {"id": config_id(cfg), "config": cfg.to_dict(), "folds": per_fold, "summary": fold_summary(per_fold),
            "seconds": time.perf_counter() - start, "streamed": is_streamed(x), "history": history}


@dataclass
class _FoldHead:
    """A fold's trained head, stacked (numpy weights) or fitted by Keras (streamed features)."""

    stacked: StackedHead | None = None
    trained: TrainedHead | None = None

    @property
    def history(self) -> dict:
        return (self.stacked or self.trained).history

    @property
    def best_epoch(self) -> int:
        return (self.stacked or self.trained).best_epoch

    def proba(self, x) -> np.ndarray:
        return np.exp(self.stacked.log_proba(x)) if self.stacked else predict_proba(self.trained.model, x)

    def model(self):
        return self.stacked.to_keras() if self.stacked else self.trained.model


def _fold_heads(x, y: np.ndarray, parts, num_classes: int, cfg: HeadConfig) -> list[_FoldHead]:
    """One head per (fit, stop, scored) part: all at once from features in memory, else fold by fold."""
    if not is_streamed(x):
        return [_FoldHead(stacked=h) for h in fit_stack(x, y, [Part(cfg, fit, stop) for fit, stop, _ in parts],
                                                         num_classes)]
    return [_FoldHead(trained=fit_part(x, y, part, num_classes, cfg)[0]) for part in parts]


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
    winner as train-head would to test it once.

    Every leaderboard also has a linear baseline row (`linear_baseline`), scored like the others, never chosen."""
    if opts.metric not in METRICS:
        raise InputError(f"--metric should be one of {', '.join(METRICS)}; received {opts.metric!r}")
    if opts.folds == 1 or opts.folds < 0:
        raise InputError(f"--folds should be 0 (use the val split) or at least 2; received {opts.folds}")
    if not configs:
        raise InputError("the grid is empty; give values with --lr/--dropout/... or --grid FILE.toml")
    opts = replace(opts, memory_gb=resolve_memory_gb(opts.memory_gb), given_memory_gb=opts.memory_gb)
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
    baseline = linear_baseline(configs)
    for cfg in progress_bar(configs + [baseline] * (baseline is not None), desc="sweep", unit="config",
                            enabled=opts.progress):
        cdir = out / "configs" / config_id(cfg)
        done = cdir / "result.json"
        if done.is_file():
            res = json.loads(done.read_text())
            res["summary"] = fold_summary(res["folds"])  # from the fold scores: a result of an older version too
            results.append(res)
            skipped += 1
            continue
        res = evaluate_config(grouped, split, folds, cfg, views, tta_stream_gb, seed=opts.split.seed)
        res["baseline"] = cfg is baseline
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
        best_dir, best_metrics = _final_fit(data, split, out, results, winner, opts, how, configs)
    return SweepResult(out, board, computed, skipped, best_dir, best_metrics, data.class_map, winner, how)


def linear_baseline(configs: list[HeadConfig]) -> HeadConfig | None:
    """The linear head every leaderboard is compared with (the first configuration's training, no hidden layer); None
    where the grid has a linear head of its own."""
    if any(not cfg.hidden for cfg in configs):
        return None
    return replace(configs[0], hidden=())


WINNER_PROTOCOL = "trained on train, early-stopped and calibrated on val, operating point on val"


def sweep_command(cache: Path, out: Path, opts: SweepOptions, configs: list[HeadConfig]) -> list[str]:
    """The sweep command that reruns (resumes) this sweep: its grid written to OUT/grid.toml, and the options the
    user chose (the machine's memory budget only when it was given)."""
    command = ["bottleneck", "sweep", str(cache), "--out", str(out)]
    if write_grid_toml(configs, out / "grid.toml"):
        command += ["--grid", str(out / "grid.toml")]
    s = opts.split
    command += ["--folds", str(opts.folds)] * bool(opts.folds) + ["--metric", opts.metric] * (
        opts.metric != SweepOptions.metric)
    if opts.split_from:
        command += ["--split-from", str(opts.split_from)]
    elif (s.val, s.test, s.seed) != (SplitSpec.val, SplitSpec.test, SplitSpec.seed):
        command += ["--val", f"{s.val:g}", "--test", f"{s.test:g}", "--split-seed", str(s.seed)]
    command += ["--class-map", opts.class_map.argument] if opts.class_map else []
    command += ["--duplicates", opts.duplicates] + ["--tta"] * opts.tta
    return command + (["--memory-gb", f"{opts.given_memory_gb:g}"] if opts.given_memory_gb is not None else [])


def _final_fit(data, split, out: Path, results, best_id: str, opts: SweepOptions, how: str = "",
               configs: list[HeadConfig] = ()):
    """Retrain the winner as train-head trains a head (on train, early-stopped on val, calibrated and given an
    operating point on val) and evaluate it once on test: a full run directory with train-head's report."""
    best = next(r for r in results if r["id"] == best_id)
    best_dir = out / "best"
    cfg_path = best_dir / "config.json"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if old.get("sweep_config_id") == best_id and old.get("winner_protocol") == WINNER_PROTOCOL:
            return best_dir, json.loads((best_dir / "metrics.json").read_text())
    cfg = HeadConfig(**{k: (tuple(v) if k == "hidden" else v) for k, v in best["config"].items()
                        if k in {f.name for f in fields(HeadConfig)}})
    run_opts = RunOptions(overwrite=True, progress=opts.progress, tta=opts.tta, memory_gb=opts.memory_gb)
    r = fit_and_write(data, split, json.loads((out / "sweep.json").read_text()) | {"from": str(out)},
                      cfg, best_dir, run_opts, command=sweep_command(data.path, out, opts, configs),
                      extra_config={"sweep": str(out), "sweep_config_id": best_id, "selected_by": opts.metric,
                                    "selection": how, "winner_protocol": WINNER_PROTOCOL,
                                    "validation": best["summary"]})
    return r.run_dir, r.metrics
