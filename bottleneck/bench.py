"""`bottleneck bench`: measured figures for the speed claims, printed, never asserted in tests.

- head: seconds per epoch of the default head on an N x D cache (default 10,000 x 2048);
- run: a whole default `train-head` run on that cache (load, split, train with early stopping, metrics,
  plots, report);
- extraction: images/s of a real `extract` (JPEG decode + resize + backbone) over synthetic
  HAM-sized images, extrapolated to N images, to compare the head's cost with one pass of the CNN.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import CacheConfig
from .cache_write import CacheWriter
from .dataset import build_index
from .demo import make_demo_dataset
from .errors import InputError
from .extract import ExtractOptions, extract
from .heads import HeadConfig, fit_head
from .runs import RunOptions, train_head_run
from .sweep import SweepOptions, expand_grid, run_sweep
from .tfimport import tensorflow


PARTS = ("head", "run", "extract", "sweep", "views")


@dataclass(frozen=True)
class BenchOptions:
    rows: int = 10_000
    dim: int = 2048
    classes: int = 7
    epochs: int = 5
    backbone: str = "inception_v3"
    image_size: int | None = None
    images: int = 64
    sweep_epochs: int = 3  # per configuration in the sweep benchmark (fixed: no early stopping)
    seed: int = 0


def synthetic_features(rows: int, dim: int, classes: int, seed: int = 0):
    """HAM10000-like class imbalance (67% one class), groups of ~1.4 images, class-dependent means."""
    rng = np.random.default_rng(seed)
    shares = np.array([0.67, 0.11, 0.11, 0.05, 0.03, 0.015, 0.015])[:classes]
    shares = shares / shares.sum()
    y = rng.choice(classes, size=rows, p=shares)
    centers = rng.normal(0, 0.3, size=(classes, dim))
    x = np.abs(centers[y] + rng.normal(0, 1, size=(rows, dim))).astype(np.float16)  # (N, D) like ReLU features
    groups = np.array([f"L{i // 2 if i % 3 else i}" for i in range(rows)], dtype=object)
    return x, y, groups


def write_synthetic_cache(path: Path, opts: BenchOptions) -> Path:
    x, y, groups = synthetic_features(opts.rows, opts.dim, opts.classes, opts.seed)
    names = [f"class{c}" for c in range(opts.classes)]
    config = CacheConfig(backbone="synthetic", weights="none", weights_sha256="", seed=opts.seed, input_size=0,
                         pooling="avg", preprocessing="none", dtype="float16", num_features=opts.dim)
    with CacheWriter(path, config, {"dataset": "bench"}, tuple(names)) as w:
        for start in range(0, opts.rows, 4096):
            sl = slice(start, start + 4096)
            w.write_batch([dict(image_id=f"b{i}", path=f"b{i}.jpg", label=names[y[i]], group=groups[i],
                                sha256=f"{i:064x}", width=600, height=450) for i in range(*sl.indices(opts.rows))],
                          x[sl])
    return path


def bench_head_epoch(opts: BenchOptions) -> dict:
    """Median seconds per epoch of the default head (no early stop), first epoch (tracing) reported apart."""
    tensorflow()
    import keras  # after tensorflow(): its import is the slow, noisy part of start-up

    x, y, _ = synthetic_features(opts.rows, opts.dim, opts.classes, opts.seed)
    x = x.astype(np.float32)
    n_val = opts.rows // 10
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    cfg = HeadConfig(epochs=opts.epochs, patience=opts.epochs + 1)
    fit_head(x[n_val:], y[n_val:], x[:n_val], y[:n_val], opts.classes, cfg, callbacks=[Timer()])
    steady = times[1:] or times
    return {"rows": opts.rows - n_val, "dim": opts.dim, "epochs": len(times), "first_epoch_s": times[0],
            "epoch_s": float(np.median(steady))}


def bench_train_head_run(opts: BenchOptions, workdir: Path) -> dict:
    cache = write_synthetic_cache(workdir / "bench.h5", opts)
    start = time.perf_counter()
    r = train_head_run(cache, HeadConfig(), RunOptions(out=workdir / "run", progress=False))
    seconds = time.perf_counter() - start
    epochs = json.loads((r.run_dir / "config.json").read_text())["epochs_run"]
    return {"seconds": seconds, "epochs_run": epochs, "train_seconds": r.seconds}


def bench_extraction(opts: BenchOptions, workdir: Path) -> dict:
    """A real extraction of `images` synthetic 600x450 JPEGs (HAM10000's size) with a seeded random backbone
    (compute is the same as with ImageNet weights)."""
    per_class = max(1, opts.images // 4)  # the demo gives nv twice as many: 4 x per_class images
    ds = make_demo_dataset(workdir / "images", images_per_class=per_class, image_size=600, seed=opts.seed)
    index = build_index(ds.root)
    s = extract(index, ExtractOptions(backbone=opts.backbone, weights="none", image_size=opts.image_size,
                                      cache=workdir / "extract.h5", progress=False, dtype="float32"))
    return {"backbone": opts.backbone, "images": s.extracted, "images_per_s": s.images_per_s,
            "build_s": s.build_seconds}


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
    cmd_s = []
    for k in range(commands):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bottleneck", "train-head", str(cache), "--epochs", str(e),
                        "--patience", str(e + 1), "--out", str(workdir / f"cmd{k}"), "--quiet"],
                       check=True, capture_output=True)
        cmd_s.append(time.perf_counter() - start)
    return {"configs": len(configs), "epochs": e, "sweep_s": sweep_s, "in_process_x16_s": 16 * one_s,
            "commands_x16_s": 16 * float(np.mean(cmd_s)), "commands_timed": commands}


def bench_views(opts: BenchOptions, workdir: Path, n_views: int = 7) -> dict:
    """Extraction cost of N stored views relative to the plain view alone, and disk size per view."""
    ds = make_demo_dataset(workdir / "view-images", images_per_class=max(1, opts.images // 4), image_size=600,
                           seed=opts.seed)
    index = build_index(ds.root)
    out = {}
    for v in (0, n_views):
        path = workdir / f"views{v}.h5"
        s = extract(index, ExtractOptions(backbone=opts.backbone, weights="none", image_size=opts.image_size,
                                          cache=path, progress=False, views=v))
        out[v] = (s.seconds - s.build_seconds, path.stat().st_size, s.extracted)
    (t0, size0, n), (tv, sizev, _) = out[0], out[n_views]
    return {"views": n_views, "images": n, "plain_s": t0, "views_s": tv, "cost_ratio": tv / t0,
            "bytes_per_view_per_image": (sizev - size0) / (n * n_views)}


def run_bench(opts: BenchOptions = BenchOptions(), parts=PARTS) -> dict:
    """The figures of the chosen `parts` (see PARTS), measured in one temporary folder, plus the machine."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise InputError(f"--part should be head, run, extract, sweep or views; received {', '.join(sorted(unknown))}")
    tf = tensorflow()

    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                                f"{len(tf.config.list_physical_devices('GPU'))} GPU, TensorFlow {tf.__version__}"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "head" in parts:
            results["head"] = bench_head_epoch(opts)
        if "run" in parts:
            results["run"] = bench_train_head_run(opts, tmp)
        if "extract" in parts:
            results["extract"] = bench_extraction(opts, tmp)
        if "sweep" in parts:
            results["sweep"] = bench_sweep(opts, tmp)
        if "views" in parts:
            results["views"] = bench_views(opts, tmp)
    if "extract" in results:
        one_pass = opts.rows / results["extract"]["images_per_s"]
        results["backbone_pass_s"] = one_pass
        if "head" in results:
            results["epoch_vs_pass"] = results["head"]["epoch_s"] / one_pass
        if "run" in results:
            results["run_vs_pass"] = results["run"]["seconds"] / one_pass
    return results


def format_results(r: dict, opts: BenchOptions) -> str:
    lines = [f"machine: {r['machine']}"]
    if "head" in r:
        h = r["head"]
        lines.append(f"head epoch ({h['rows']} x {h['dim']}, batch 128, default head): {h['epoch_s']:.3f} s "
                     f"(first epoch, with tracing: {h['first_epoch_s']:.3f} s)")
    if "run" in r:
        lines.append(f"whole default train-head run ({opts.rows} x {opts.dim} cache): {r['run']['seconds']:.1f} s "
                     f"({r['run']['epochs_run']} epochs, {r['run']['train_seconds']:.1f} s of fitting)")
    if "extract" in r:
        e = r["extract"]
        lines.append(f"extraction, {e['backbone']} ({e['images']} JPEGs 600x450): {e['images_per_s']:.1f} images/s "
                     f"-> one pass over {opts.rows} images: {r['backbone_pass_s']:.0f} s")
    if "epoch_vs_pass" in r:
        lines.append(f"one head epoch = {100 * r['epoch_vs_pass']:.3f}% of one backbone pass")
    if "run_vs_pass" in r:
        lines.append(f"whole train-head run = {100 * r['run_vs_pass']:.2f}% of one backbone pass")
    if "sweep" in r:
        w = r["sweep"]
        lines.append(f"sweep of {w['configs']} configurations ({w['epochs']} epochs each): {w['sweep_s']:.1f} s; "
                     f"16 x one in-process head: {w['in_process_x16_s']:.1f} s; 16 separate train-head commands: "
                     f"{w['commands_x16_s']:.1f} s (mean of {w['commands_timed']} timed, x16)")
    if "views" in r:
        v = r["views"]
        lines.append(f"extracting {v['views']} views besides the plain one ({v['images']} images, {opts.backbone}): "
                     f"{v['views_s']:.1f} s vs {v['plain_s']:.1f} s plain = {v['cost_ratio']:.1f}x; disk "
                     f"{v['bytes_per_view_per_image'] / 1024:.1f} KiB per view per image "
                     f"({v['bytes_per_view_per_image'] * opts.rows / 2**20:.0f} MiB per view for {opts.rows} images)")
    return "\n".join(lines)
