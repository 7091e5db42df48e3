"""`bench --part fixed`: what heads cost beyond their arithmetic, timed as a user meets it (each command a new
process) on a 70-row cache (10 images of each of 7 classes, one lesion each: the small-data case) and on the
`--rows` cache, as ratios of two commands in one run:

- a 5-fold sweep of 4 configurations (plus its linear baseline and the winner's full run) against one train-head;
- `evaluate` of a run on its cache against `info` on the same cache (no TensorFlow in either);
- the linear head (`train-head --hidden none`) against scikit-learn's LogisticRegression on the same standardised
  training rows, class-weighted the same way: fitting seconds and test balanced accuracy.

Also `bench_sweep`: a 16-configuration sweep in one process against 16 in-process heads and 16 commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..cache import CacheConfig, CacheWriter, load_cache
from ..errors import BottleneckError
from ..heads import HeadConfig, load_split
from ..runs import RunOptions, SweepOptions, expand_grid, run_sweep, train_head_run
from .data import BenchOptions, synthetic_features, write_synthetic_cache

SMALL_ROWS = 70
SWEEP_GRID = ["--lr", "1e-3,3e-4", "--dropout", "0.3,0.5"]  # 4 configurations


def write_small_cache(path: Path, dim: int, seed: int = 0) -> Path:
    """70 rows: 10 of each of 7 classes, one lesion per image, class-dependent means (as synthetic_features)."""
    x, _, _ = synthetic_features(SMALL_ROWS, dim, 7, seed)
    y = np.repeat(np.arange(7), SMALL_ROWS // 7)
    centers = np.random.default_rng(seed + 1).normal(0, 0.3, size=(7, dim))
    x = np.abs(centers[y] + x.astype(np.float32) - x.astype(np.float32).mean(axis=0)).astype(np.float16)
    names = [f"class{c}" for c in range(7)]
    config = CacheConfig(backbone="synthetic", weights="none", weights_sha256="", seed=seed, input_size=1,
                         pooling="avg", preprocessing="none", dtype="float16", num_features=dim)
    with CacheWriter(path, config, {"dataset": "bench-small"}, tuple(names)) as w:
        w.write_batch([dict(image_id=f"s{i}", path=f"s{i}.jpg", label=names[y[i]], group=f"L{i}", sha256=f"{i:064x}",
                            width=600, height=450) for i in range(SMALL_ROWS)], x)
    return path


def _timed(args: list[str]) -> float:
    """Seconds of one `bottleneck ARGS` command in a new process; a failure is raised with its last error line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bottleneck", *args], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BottleneckError(f"bench: `bottleneck {' '.join(args)}` failed ({last})")
    return time.perf_counter() - start


def fixed_costs(cache: Path, workdir: Path, epochs: list[str]) -> dict:
    """One cache's ratios (see the module's docstring); `epochs`: extra train-head/sweep options, e.g. --epochs 5."""
    run, lin = workdir / f"{cache.stem}-run", workdir / f"{cache.stem}-linear"
    out = {"train_head_s": _timed(["train-head", str(cache), "--out", str(run), "-q", *epochs])}
    sweep = workdir / f"{cache.stem}-sw"
    out["sweep_s"] = _timed(["sweep", str(cache), "--folds", "5", *SWEEP_GRID, "--out", str(sweep), "-q", *epochs])
    out["info_s"] = _timed(["info", str(cache)])
    out["evaluate_s"] = _timed(["evaluate", str(run), "--out", str(workdir / f"{cache.stem}-eval")])
    _timed(["train-head", str(cache), "--hidden", "none", "--out", str(lin), "-q", *epochs])
    config = json.loads((lin / "config.json").read_text())
    metrics = json.loads((lin / "metrics.json").read_text())
    out |= {"linear_fit_s": config["train_seconds"], "linear_epochs": config["epochs_run"],
            "linear_balanced_accuracy": metrics["test"]["balanced_accuracy"],
            "sweep_vs_train_head": out["sweep_s"] / out["train_head_s"],
            "evaluate_vs_info": out["evaluate_s"] / out["info_s"]}
    return out | sklearn_linear(cache, lin)


def sklearn_linear(cache: Path, run: Path) -> dict:
    """scikit-learn's LogisticRegression (lbfgs, class_weight="balanced", C=1) on the run's train rows, standardised
    with their mean and standard deviation (as the head's Normalization layer does), scored on the run's test rows by
    its most probable class (the head is scored by its own run, with its decision rule)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    data = load_cache(cache)
    split, _ = load_split(run, data.image_ids)
    x, y = np.asarray(data.features, np.float32), data.labels
    train, test = split == "train", split == "test"
    scaler = StandardScaler().fit(x[train])
    start = time.perf_counter()
    model = LogisticRegression(class_weight="balanced", max_iter=1000).fit(scaler.transform(x[train]), y[train])
    seconds = time.perf_counter() - start
    score = balanced_accuracy_score(y[test], model.predict(scaler.transform(x[test])))
    return {"sklearn_fit_s": seconds, "sklearn_balanced_accuracy": float(score)}


def bench_fixed(opts: BenchOptions, workdir: Path) -> dict:
    """The small-data cache at the default head's epochs, and the --rows cache at --epochs (its sweep would
    otherwise run 25 heads to early stopping on 10,000 rows: minutes of arithmetic, not of fixed cost)."""
    small = write_small_cache(workdir / "small.h5", opts.dim, opts.seed)
    large = workdir / "fixed-large.h5"
    write_synthetic_cache(large, opts)
    return {"small": {"rows": SMALL_ROWS, "epochs": HeadConfig().epochs} | fixed_costs(small, workdir, []),
            "large": {"rows": opts.rows, "epochs": opts.epochs}
            | fixed_costs(large, workdir, ["--epochs", str(opts.epochs)])}


def format_fixed(r: dict) -> list[str]:
    lines = []
    for name, f in r.items():
        lines.append(
            f"fixed costs, {f['rows']} rows ({name}, up to {f['epochs']} epochs): 5-fold sweep of 4 configurations "
            f"{f['sweep_s']:.1f} s vs one train-head {f['train_head_s']:.1f} s = {f['sweep_vs_train_head']:.2f}x "
            f"(target <= 2.5x); evaluate {f['evaluate_s']:.1f} s vs info {f['info_s']:.1f} s = "
            f"{f['evaluate_vs_info']:.2f}x (target <= 2x); linear head {f['linear_fit_s']:.2f} s of fitting "
            f"(to convergence), test balanced accuracy {f['linear_balanced_accuracy']:.3f} vs "
            f"scikit-learn LogisticRegression {f['sklearn_fit_s']:.2f} s, {f['sklearn_balanced_accuracy']:.3f}")
    return lines


def bench_sweep(opts: BenchOptions, workdir: Path, commands: int = 2) -> dict:
    """A 16-configuration sweep against 16 x one in-process head and 16 separate `train-head` commands
    (`commands` of them are run and timed; the figure is their mean x 16)."""
    cache = workdir / "bench.h5"
    if not cache.exists():
        write_synthetic_cache(cache, opts)
    e = opts.sweep_epochs
    grid = {"lr": [1e-3, 3e-4], "dropout": [0.3, 0.5], "hidden": [(512, 512), (1024,)], "batch_size": [128, 256],
            "epochs": [e], "patience": [e + 1]}
    configs = expand_grid(grid)
    start = time.perf_counter()
    run_sweep(cache, configs, SweepOptions(out=workdir / "sweep", progress=False))
    sweep_s = time.perf_counter() - start
    start = time.perf_counter()
    train_head_run(cache, HeadConfig(epochs=e, patience=e + 1), RunOptions(out=workdir / "one", progress=False))
    one_s = time.perf_counter() - start
    cmd_s = [_timed(["train-head", str(cache), "--epochs", str(e), "--patience", str(e + 1), "--out",
                     str(workdir / f"cmd{k}"), "--quiet"]) for k in range(commands)]
    return {"configs": len(configs), "epochs": e, "sweep_s": sweep_s, "in_process_x16_s": 16 * one_s,
            "commands_x16_s": 16 * float(np.mean(cmd_s)), "commands_timed": commands}
