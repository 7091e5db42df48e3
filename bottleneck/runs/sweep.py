"""`bottleneck sweep`: many heads off one cache load, in one process, with one split and a leaderboard.

Selection only ever looks at validation data (the val split, or K grouped folds of train+val); the
test split is used once, by the winner, after it is retrained on train+val. Early stopping watches a grouped
slice of the training rows (`early_stopping_slice`), never the rows being scored: a fold (or a val split) that
picked its own best epoch would score itself optimistically.

    out/sweep.json            what the sweep is bound to (cache SHA-256, split, folds, metric)
    out/split.csv             the one split of the whole sweep
    out/configs/<id>/         result.json (+ history.csv) per configuration: the unit of resumption
    out/leaderboard.csv|.md   ranked by the chosen metric
    out/best/                 the winner retrained on train+val, evaluated on test: a full run directory
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cache import GIB, CacheData, features_fit, is_streamed, load_cache_within, read_views, resolve_memory_gb, take
from ..errors import InputError
from ..heads import (
    ClassMap,
    HeadConfig,
    SplitSpec,
    TrainedHead,
    fit_head,
    load_split,
    map_classes,
    parse_hidden,
    predict_proba,
    save_split,
)
from ..stats import compute_metrics, fmt, group_keys
from ..util import sha256_file, write_json_atomic
from .directory import write_history
from .train import RunOptions, fit_and_write, require_views, resolve_split, task_map, tta_proba

METRICS = ("balanced_accuracy", "accuracy", "roc_auc_macro", "melanoma_sensitivity")


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("true", "1", "yes"):
        return True
    if str(v).lower() in ("false", "0", "no"):
        return False
    raise ValueError(v)


def _hidden(v) -> tuple[int, ...]:
    if isinstance(v, str):
        return parse_hidden(v)
    if isinstance(v, int):
        return (v,)
    return tuple(int(x) for x in v)


# Grid keys and how one value is read; every other HeadConfig field is fixed for the whole sweep.
GRID_KEYS = {"hidden": _hidden, "dropout": float, "optimizer": str, "lr": float, "decay_rate": float,
             "decay_steps": int, "batch_size": int, "class_weight": str, "seed": int, "epochs": int,
             "patience": int, "standardize": _bool}


def parse_values(key: str, values: list) -> list:
    """Convert and validate one grid key's values; errors name the key and the bad value."""
    if key not in GRID_KEYS:
        raise InputError(f"unknown grid key {key!r}; known keys: {', '.join(GRID_KEYS)}")
    out = []
    for v in values:
        try:
            out.append(GRID_KEYS[key](v))
        except (ValueError, TypeError, InputError):
            raise InputError(f"grid key {key!r}: cannot read value {v!r}") from None
    if not out:
        raise InputError(f"grid key {key!r} has no values")
    return out


def split_list(text: str) -> list[str]:
    """"1e-3,3e-4" -> ["1e-3", "3e-4"] (for every option but --hidden, whose commas are layer sizes)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def load_grid_toml(path: Path) -> dict[str, list]:
    """A TOML grid: `lr = [1e-3, 3e-4]`, `dropout = 0.5`, `hidden = [[512, 512], [1024]]` or `["512,512"]`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"grid file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"grid file {path} is not valid TOML: {exc}") from None
    grid = {}
    for key, value in raw.items():
        if key == "hidden" and isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            value = [value]  # hidden = [512, 512] is one architecture, not two
        grid[key] = parse_values(key, value if isinstance(value, list) else [value])
    return grid


def grid_from_options(grid_file: Path | None = None, listed: dict[str, str | None] | None = None,
                      hidden: list[str] | None = None, single: dict[str, int | None] | None = None) -> dict[str, list]:
    """The grid of `bottleneck sweep`: a TOML file's keys, then options, which win over the file.

    listed: comma-separated values per key ("1e-3,3e-4"); hidden: one architecture per item ("512,512");
    single: one value per key (epochs, patience); None means the option was not given."""
    values = load_grid_toml(grid_file) if grid_file else {}
    for key, text in (listed or {}).items():
        if text is not None:
            values[key] = parse_values(key, split_list(text))
    if hidden:
        values["hidden"] = parse_values("hidden", hidden)
    for key, value in (single or {}).items():
        if value is not None:
            values[key] = parse_values(key, [value])
    return values


def expand_grid(grid: dict[str, list], base: HeadConfig = HeadConfig()) -> list[HeadConfig]:
    """Cartesian product of the grid over `base`, each configuration validated, duplicates dropped."""
    keys = list(grid)
    configs, seen = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        cfg = replace(base, **dict(zip(keys, combo))).validate()
        if config_id(cfg) not in seen:
            seen.add(config_id(cfg))
            configs.append(cfg)
    return configs


def config_id(cfg: HeadConfig) -> str:
    return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def _score(metrics: dict, metric: str) -> float | None:
    if metric == "melanoma_sensitivity":
        return (metrics.get("melanoma") or {}).get("sensitivity")
    return metrics.get(metric)


def make_folds(data: CacheData, split: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) for each train+val row, -1 elsewhere: grouped and stratified."""
    from sklearn.model_selection import StratifiedGroupKFold

    dev = np.flatnonzero(np.isin(split, ("train", "val")))
    y = data.labels[dev]
    groups = group_keys(data.groups[dev], data.image_ids[dev])
    for c in np.unique(y):
        n_groups = len(set(groups[y == c]))
        if n_groups < k:
            raise InputError(f"--folds {k}: class {data.class_names[c]!r} has only {n_groups} groups in train+val; "
                             f"use --folds {max(2, n_groups)} or fewer")
    folds = np.full(len(split), -1)
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(skf.split(np.zeros(len(dev)), y, groups)):
        folds[dev[held]] = f
    return folds


EARLY_STOP_FRACTION = 0.15  # of a CV fold's training groups, per class stratum: its early-stopping slice


def early_stopping_slice(data: CacheData, rows: np.ndarray, seed, fraction: float = EARLY_STOP_FRACTION,
                         where: str = " of a CV fold", fix: str = "use fewer --folds, or --folds 0"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Split a part's training rows into (fit, stop): `stop` watches early stopping, `fit` trains.

    Grouped (a lesion is wholly in one of them) and stratified as `make_split` is: each group counts under the
    rarest class it holds, and `fraction` of each class's groups (at least one, when it has two or more) goes to
    `stop`; a class with a single group stays in `fit`. Deterministic: `seed` (an int or a tuple of ints, e.g.
    (split seed, fold)) and the data decide, not the row order."""
    rows = np.asarray(rows)
    labels = data.labels[rows]
    uniq, inverse = np.unique(group_keys(data.groups[rows], data.image_ids[rows]), return_inverse=True)  # sorted: row order does not matter
    n_classes = len(data.class_names)
    rarest_first = np.lexsort((np.arange(n_classes), np.bincount(labels, minlength=n_classes)))
    place = np.empty(n_classes, int)
    place[rarest_first] = np.arange(n_classes)
    rarest = np.full(len(uniq), n_classes)
    np.minimum.at(rarest, inverse, place[labels])
    stratum = rarest_first[rarest]  # (groups,) the rarest class each group holds
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(uniq), bool)
    for c in np.unique(stratum):
        gids = np.flatnonzero(stratum == c)
        if len(gids) >= 2:
            chosen[rng.permutation(gids)[:max(1, int(round(fraction * len(gids))))]] = True
    if not chosen.any():
        raise InputError(f"no class has two groups among {len(rows)} training rows{where}, so no grouped "
                         f"early-stopping slice can be set aside; {fix}")
    stop = chosen[inverse]
    return rows[~stop], rows[stop]


def cv_parts(data: CacheData, split: np.ndarray, folds: np.ndarray | None, seed: int = 0
             ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(fit, stop, scored) rows of each part a configuration is scored on.

    No folds: val is scored; the train split minus its early-stopping slice (seeded by (seed,)) trains. K
    folds: fold f is scored; the other folds minus their slice (seeded by (seed, f)) train. Either way the scored
    rows never pick the epoch, so a configuration's score is not flattered by its own stopping point."""
    if folds is None:
        fit, stop = early_stopping_slice(data, np.flatnonzero(split == "train"), (seed,), where=" of the train split",
                                         fix="add images, or use `train-head`, which early-stops on val")
        return [(fit, stop, np.flatnonzero(split == "val"))]
    parts = []
    for f in range(folds.max() + 1):
        fit, stop = early_stopping_slice(data, np.flatnonzero((folds >= 0) & (folds != f)), (seed, f))
        parts.append((fit, stop, np.flatnonzero(folds == f)))
    return parts


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


def _bind(out: Path, data: CacheData, opts: SweepOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Create or reopen the sweep directory; a directory made for another cache or protocol is refused."""
    identity = {"cache": str(data.path.resolve()), "cache_sha256": sha256_file(data.path), "folds": opts.folds,
                "split_seed": opts.split.seed, "fractions": list(opts.split.fractions()),
                "split_from": str(opts.split_from) if opts.split_from else None, "tta": opts.tta,
                "class_map": opts.class_map.spec if opts.class_map else None,
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
        split, _ = resolve_split(data, opts.split, opts.split_from)
        save_split(out / "split.csv", data.image_ids, split)
        write_json_atomic(meta, identity)
    folds = make_folds(data, split, opts.folds, opts.split.seed) if opts.folds else None
    return split, folds


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
                         **{k: _score(m, k) for k in METRICS}})
    summary = {}
    for k in METRICS + ("best_epoch",):
        vals = [p[k] for p in per_fold if p[k] is not None]
        summary[k] = {"mean": float(np.mean(vals)) if vals else None,
                      "std": float(np.std(vals)) if len(vals) > 1 else None}  # no spread from one score
    return {"id": config_id(cfg), "config": cfg.to_dict(), "folds": per_fold, "summary": summary,
            "seconds": time.perf_counter() - start, "streamed": is_streamed(x), "history": history}


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


def head_size(row: dict) -> tuple[int, int]:
    """How complex a leaderboard row's head is: (hidden units in all, hidden layers); a linear head is (0, 0)."""
    hidden = [int(h) for h in str(row["hidden"] or "").split(",") if h.strip() and int(h)]
    return sum(hidden), len(hidden)


def choose_winner(rows: list[dict], metric: str) -> tuple[str | None, str]:
    """(id, how) of the winner: the best mean score; configurations whose mean is within one standard deviation
    (over folds) of the best count as tied, and the simplest head among them wins (fewest hidden units, then
    layers; then the higher mean). Without a spread (no folds) the best mean wins outright."""
    scored = [r for r in rows if r["score"] is not None]
    if not scored:
        return None, "no configuration has a score"
    best = scored[0]
    if best["std"] is None:
        return best["id"], f"highest validation {metric} ({fmt(best['score'])}, one validation split, no spread)"
    floor = best["score"] - best["std"]
    tied = [r for r in scored if r["score"] >= floor]
    winner = min(tied, key=lambda r: (head_size(r), -r["score"], r["id"]))
    how = (f"highest mean {metric} over folds is {fmt(best['score'])} ± {fmt(best['std'])} ({best['id']}); "
           f"{len(tied)} configuration{'s' * (len(tied) != 1)} within one standard deviation of it "
           f"(mean >= {fmt(floor)}) count as tied, and the simplest head among them wins (fewest hidden units, "
           f"then fewest layers): {winner['id']}")
    return winner["id"], how


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
    split, folds = _bind(out, data, opts)
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
            results.append(json.loads(done.read_text()))
            skipped += 1
            continue
        res = evaluate_config(data, split, folds, cfg, views, tta_stream_gb, seed=opts.split.seed)
        cdir.mkdir(parents=True, exist_ok=True)
        write_history(cdir / "history.csv", res.pop("history"))
        write_json_atomic(done, res)  # written last: a config is finished exactly when this file exists
        results.append(res)
        computed += 1

    board = _leaderboard(results, opts.metric, out)
    winner, how = choose_winner(board, opts.metric)
    (out / "leaderboard.md").write_text(format_leaderboard(board, opts.metric) + f"\n\nWinner: {how}.\n")
    best_dir, best_metrics = None, None
    if winner is not None:
        best_dir, best_metrics = _final_fit(data, split, out, results, winner, opts, how)
    return SweepResult(out, board, computed, skipped, best_dir, best_metrics, data.class_map, winner, how)


def _leaderboard(results: list[dict], metric: str, out: Path) -> list[dict]:
    import pandas as pd

    rows = []
    for r in results:
        s = r["summary"]
        cfg = r["config"]
        rows.append({"id": r["id"], "score": s[metric]["mean"], "std": s[metric]["std"],
                     **{f"{k}": s[k]["mean"] for k in METRICS if k != metric},
                     "best_epoch": s["best_epoch"]["mean"], "seconds": round(r["seconds"], 2),
                     **{k: (",".join(map(str, v)) if k == "hidden" else v) for k, v in cfg.items()},
                     "run_dir": str(out / "configs" / r["id"])})
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0), r["id"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    df = pd.DataFrame(rows)
    if len(df):
        df = df[["rank", *[c for c in df.columns if c != "rank"]]]
    df.rename(columns={"score": metric, "std": f"{metric}_std"}).to_csv(out / "leaderboard.csv", index=False)
    return rows


def format_leaderboard(rows: list[dict], metric: str, top: int | None = None) -> str:
    head = f"| rank | {metric}{' (mean ± std)' if any(r['std'] is not None for r in rows) else ''} | hidden | dropout | optimizer | lr | decay | batch | class weight | seed | epochs | id |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows[:top]:
        score = fmt(r["score"]) + ("" if r["std"] is None else f" ± {fmt(r['std'])}")
        epochs = "-" if r["best_epoch"] is None else f"{r['best_epoch']:.0f}"
        lines.append(f"| {r['rank']} | {score} | {r['hidden'] or '0'} | {r['dropout']} | "
                     f"{r['optimizer']} | {r['lr']:g} | {r['decay_rate']:g}/{r['decay_steps']} | {r['batch_size']} | "
                     f"{r['class_weight']} | {r['seed']} | {epochs} | "
                     f"{r['id']} |")
    return "\n".join(lines)


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
                      command=["bottleneck", "sweep", str(data.path), "--out", str(out)]
                      + (["--class-map", opts.class_map.spec] if opts.class_map else []), final=True,
                      extra_config={"sweep_config_id": best_id, "selected_by": opts.metric, "selection": how,
                                    "validation": best["summary"]})
    return r.run_dir, r.metrics
