"""`bottleneck bench`: measured figures for the speed claims, printed, never asserted in tests.

- head: seconds per epoch of the default head on an N x D cache (default 10,000 x 2048);
- run: a whole default `train-head` run on that cache (load, split, train with early stopping, metrics,
  plots, report);
- writer: one CacheWriter's rows/s against plain h5py writing the same array in one call (`write_rate`);
- ceiling: the real `extract` with a stand-in backbone whose forward pass costs nothing, per core count, against
  the decode-only rate, and with a forward pass that emulates one GPU's rate (`pipeline_ceiling`);
- decode: images/s of each way of decoding HAM- and ISIC-sized JPEGs on 1, 2 and all cores, and how far their
  pixels are from the current decoder's (`decoders`);
- extract: steady-state images/s of a real `extract` over HAM-sized JPEGs against the pure forward pass, the very
  function extraction runs on the same batches, interleaved (their ratio is the pipeline's efficiency: median and
  spread), decode alone, each native precision against float32, and the forward pass's FLOP/s against a matrix
  product's (the machine's own limit) (`extraction`);
- batch1: a one-image-at-a-time loop against `extract`; load: the cache against one text file per image;
- rerun: a rerun with nothing new and with 1% new images, as fractions of the full extraction;
- memory: peak RSS of an `extract` process at N and 8N images;
- sweep and views: a 16-head sweep against 16 runs; the cost and disk of stored views;
- ray: `--engine ray` on a local Ray instance against the local engine, same images (needs the [ray] extra);
- grow: adding 1% to synthetic caches of 100,000 and 1,000,000 rows against writing the same rows into an empty
  cache, and the copy of the whole file that each commit used to make;
- coverage: how often the reports' 95% intervals hold a known sensitivity in simulated test splits (`coverage`);
- duplicates: how often fingerprints and feature similarity find re-encoded, resized, cropped, mirrored and turned
  copies, how often distinct lesions look alike to them, and what a check costs (`duplicates`);
- fixed: a 5-fold sweep against one train-head, evaluate against info, the linear head against scikit-learn, each
  command a new process, on a 70-row and the N-row cache (`fixed`).

Rates are differences or steady-state windows, never whole runs with start-up in them, and each ratio compares
two ways measured in the same run: the machines are shared and drift between runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..backbones import create_backbone
from ..cache import CacheConfig, CacheWriter, load_cache
from ..errors import InputError
from ..extract import ExtractOptions, extract, make_forward
from ..heads import HeadConfig, fit_head
from ..images import build_index, load_image
from ..runs import RunOptions, train_head_run
from ..synthetic import make_demo_dataset
from ..util import progress_bar, tensorflow
from .coverage import bench_coverage
from .data import BenchOptions, synthetic_features, synthetic_rows, write_bench_images, write_synthetic_cache
from .decoders import bench_decoders
from .duplicates import bench_duplicates
from .extraction import bench_extraction, extract_once, float32_config
from .fixed import bench_fixed, bench_sweep
from .pipeline_ceiling import bench_ceiling
from .report import machine_info
from .write_rate import bench_writer

PARTS = ("head", "run", "writer", "ceiling", "decode", "extract", "batch1", "load", "rerun", "memory", "sweep",
         "views", "grow", "ray", "coverage", "duplicates", "fixed")
# `bottleneck bench` with no --part: the parts that together finish in a few minutes on a 2-core laptop and write
# little (measured: docs/benchmarks.md); --all adds the rest: `grow` writes ~4 GiB at 1,000,000 rows, `ray` starts a
# Ray instance, the others take minutes each on such a machine.
QUICK_PARTS = ("head", "run", "writer", "ceiling", "load", "coverage")


def choose_parts(parts=(), all_parts: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the parts to run, the parts skipped), each in PARTS order: the --part ones (none skipped), else every part
    with --all, else QUICK_PARTS (the others skipped, to be named to the user)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise InputError(f"--part should be among {', '.join(PARTS)}; received {', '.join(sorted(unknown))}")
    if parts and all_parts:
        raise InputError("--all runs every part and --part chooses some; give one of them")
    chosen = set(parts or (PARTS if all_parts else QUICK_PARTS))
    skipped = () if parts else tuple(p for p in PARTS if p not in chosen)
    return tuple(p for p in PARTS if p in chosen), skipped


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


def bench_ray(opts: BenchOptions, workdir: Path) -> dict:
    """The same images extracted by the local engine and by `--engine ray` on a local Ray instance started for it:
    steady-state images/s of each, and what Ray pays before its first batch. Skipped without the [ray] extra."""
    try:
        from ..extract import require_ray

        require_ray()
    except InputError as err:
        return {"skipped": str(err)}
    folder = write_bench_images(workdir / "ray-images", opts.images, opts.seed)
    runs = {engine: extract_once(build_index(folder), opts, workdir / f"ray-{engine}.h5", "float32", "off", engine)
            for engine in ("local", "ray")}
    local, ray = runs["local"], runs["ray"]
    # Rates over the stage after start-up (images_per_s): Ray's "after the first batch" rate would count batches
    # its decode tasks queued while the backbone actor was still starting.
    return {"images": opts.images, "local_images_per_s": local.images_per_s, "ray_images_per_s": ray.images_per_s,
            "ray_start_s": ray.build_seconds, "local_build_s": local.build_seconds, "local_whole_s": local.seconds,
            "ray_whole_s": ray.seconds,
            "ratio": ray.images_per_s / local.images_per_s if local.images_per_s else 0.0}


def bench_batch_one(opts: BenchOptions, workdir: Path) -> dict:
    """The one-image-at-a-time loop of a notebook (decode, then the model on a batch of one) against `extract`,
    on three batches' worth of images."""
    tf = tensorflow()

    n = 3 * opts.batch_size
    folder = write_bench_images(workdir / "batch1-images", n, opts.seed)
    index = build_index(folder)
    ours = extract_once(index, opts, workdir / "batch1.h5", "float32", xla="off")
    config = float32_config(opts)
    forward = make_forward(config, create_backbone(opts.backbone, "none", config.input_size, seed=opts.seed))
    size = config.input_size
    forward(tf.zeros((1, size, size, 3)))  # trace, as a notebook's first call would
    start = time.perf_counter()
    for entry in index.entries:
        pixels, _ = load_image(entry.path, size)
        forward(tf.constant(pixels[None], tf.float32)).numpy()
    one = n / (time.perf_counter() - start)
    return {"images": n, "batch1_images_per_s": one, "extract_images_per_s": ours.steady_images_per_s,
            "speedup": ours.steady_images_per_s / one}


def bench_cache_load(opts: BenchOptions, workdir: Path) -> dict:
    """Loading `rows` x `dim` features from the cache against one text file of comma-separated floats per image
    (the bottleneck files of the classic retraining script)."""
    cache = workdir / "bench.h5"
    if not cache.exists():
        write_synthetic_cache(cache, opts)
    x, _, _ = synthetic_features(opts.rows, opts.dim, opts.classes, opts.seed)
    text = workdir / "bottleneck-txt"
    text.mkdir(exist_ok=True)
    for i, row in enumerate(x):
        (text / f"b{i}.txt").write_text(",".join(f"{v:g}" for v in row.astype(np.float32)))
    start = time.perf_counter()
    data = load_cache(cache)
    h5_s = time.perf_counter() - start
    start = time.perf_counter()
    loaded = np.stack([np.array((text / f"b{i}.txt").read_text().split(","), np.float32) for i in range(opts.rows)])
    txt_s = time.perf_counter() - start
    assert loaded.shape == data.features.shape
    return {"rows": opts.rows, "dim": opts.dim, "cache_s": h5_s, "text_s": txt_s, "speedup": txt_s / h5_s,
            "cache_mib": cache.stat().st_size / 2**20,
            "text_mib": sum(f.stat().st_size for f in text.iterdir()) / 2**20}


def bench_rerun(opts: BenchOptions, workdir: Path) -> dict:
    """A rerun with nothing new and one with 1% new images, as fractions of the full extraction (whole calls:
    hashing, model build and commit included)."""
    folder = write_bench_images(workdir / "rerun-images", opts.images, opts.seed)
    cache = workdir / "rerun.h5"
    timed = []
    for step in ("full", "nothing new", "1% new"):
        if step == "1% new":
            write_bench_images(folder, max(1, opts.images // 100), opts.seed, start=opts.images)
        start = time.perf_counter()
        s = extract_once(build_index(folder), opts, cache, "auto")
        timed.append((time.perf_counter() - start, s.extracted))
    (full, n), (none, _), (one, added) = timed
    return {"images": n, "full_s": full, "nothing_new_s": none, "nothing_new_fraction": none / full,
            "added": added, "one_percent_s": one, "one_percent_fraction": one / full}


MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from bottleneck.extract import ExtractOptions, extract
from bottleneck.images import build_index
extract(build_index(sys.argv[1]), ExtractOptions(backbone="mobilenet_v2", weights="none", image_size=96,
        cache=Path(sys.argv[2]), progress=False, dtype="float32"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(opts: BenchOptions, workdir: Path, factor: int = 8) -> dict:
    """Peak RSS of a whole `extract` process over N and factor x N images. It uses MobileNetV2 at 96 px whatever
    --backbone is, so that 8N stays quick: the model's own memory is a constant, what could grow is the rest."""
    out = {"images": {}, "peak_rss_mib": {}}
    for n in (opts.images, factor * opts.images):
        folder = write_bench_images(workdir / f"memory-{n}", n, opts.seed)
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(workdir / f"memory-{n}.h5")],
                              check=True, capture_output=True, text=True)
        out["peak_rss_mib"][n] = int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    (n1, r1), (n8, r8) = out["peak_rss_mib"].items()
    return {"images": (n1, n8), "peak_rss_mib": (r1, r8), "growth": r8 / r1}


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


def bench_grow(opts: BenchOptions, workdir: Path, batch: int = 50_000) -> dict:
    """For each size N of `opts.grow_rows`: build an N-row cache (committed in place every `batch` rows, the
    first and last commit timed), then add 1% of N: open the writer, read the cached rows as `extract` does to
    skip them, journal and commit. The same 1% written into an empty cache is the cost of those rows alone."""
    config = CacheConfig(backbone="bench", weights="none", weights_sha256="", seed=0, input_size=299,
                         pooling="avg", preprocessing="none", dtype="float16", num_features=opts.dim)
    out = []
    for n in opts.grow_rows:
        cache, k = workdir / f"grow-{n}.h5", max(1, n // 100)
        commits = []
        with CacheWriter(cache, config, commit_seconds=0) as w:
            for start in range(0, n, batch):
                rows, feats = synthetic_rows(start, min(batch, n - start), opts.dim)
                t = time.perf_counter()
                w.write_batch(rows, feats)  # journal + commit (commit_seconds=0)
                commits.append(time.perf_counter() - t)
        size = cache.stat().st_size
        rows, feats = synthetic_rows(n, k, opts.dim)
        timed = {}
        for name, target in (("alone", workdir / f"grow-{n}-alone.h5"), ("append", cache)):
            start = time.perf_counter()
            with CacheWriter(target, config, commit_seconds=1e9) as w:
                t = time.perf_counter()
                cached, _ = w.lookup([r["image_id"] for r in rows], [r["sha256"] for r in rows])
                timed[f"{name}_read_rows_s"] = time.perf_counter() - t
                w.write_batch(rows, feats)
            timed[f"{name}_s"] = time.perf_counter() - start
            assert not cached
        start = time.perf_counter()
        shutil.copyfile(cache, workdir / "copy.h5")  # what every commit cost before commits appended in place
        copy_s = time.perf_counter() - start
        (workdir / "copy.h5").unlink()
        out.append({"rows": n, "added": k, "cache_mib": size / 2**20, "first_commit_s": commits[0],
                    "last_commit_s": commits[-1], "batch": batch, **timed,
                    "ratio": timed["append_s"] / timed["alone_s"], "copy_s": copy_s})
        cache.unlink()
    return {"sizes": out}


def run_bench(opts: BenchOptions = BenchOptions(), parts=PARTS, progress: bool = False) -> dict:
    """The figures of the chosen `parts` (see PARTS), measured in one temporary folder, plus the machine; progress:
    a progress bar over the parts (util/progress.py)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise InputError(f"--part should be among {', '.join(PARTS)}; received {', '.join(sorted(unknown))}")
    if opts.images < 2 * opts.batch_size:
        raise InputError(f"--images should be at least twice the batch size ({2 * opts.batch_size}), so that "
                         f"steady-state batches follow the first; received {opts.images}")
    if "coverage" in parts and opts.coverage_sims < 1:
        raise InputError(f"--coverage-sims should be a positive number of simulated test splits, e.g. 1000; "
                         f"received {opts.coverage_sims}")
    results: dict = {"machine": machine_info()}
    steps = {"head": lambda tmp: bench_head_epoch(opts), "run": lambda tmp: bench_train_head_run(opts, tmp),
             "writer": lambda tmp: bench_writer(opts), "ceiling": lambda tmp: bench_ceiling(opts, tmp),
             "decode": lambda tmp: bench_decoders(opts, tmp),
             "extract": lambda tmp: bench_extraction(opts, tmp), "batch1": lambda tmp: bench_batch_one(opts, tmp),
             "load": lambda tmp: bench_cache_load(opts, tmp), "rerun": lambda tmp: bench_rerun(opts, tmp),
             "memory": lambda tmp: bench_memory(opts, tmp), "sweep": lambda tmp: bench_sweep(opts, tmp),
             "views": lambda tmp: bench_views(opts, tmp), "grow": lambda tmp: bench_grow(opts, tmp),
             "ray": lambda tmp: bench_ray(opts, tmp), "coverage": lambda tmp: bench_coverage(opts.coverage_sims),
             "duplicates": lambda tmp: bench_duplicates(), "fixed": lambda tmp: bench_fixed(opts, tmp)}
    with tempfile.TemporaryDirectory() as tmp:
        bar = progress_bar([p for p in PARTS if p in parts], desc="bench", unit="part", enabled=progress)
        for part in bar:
            bar.set_description(f"bench {part}")
            results[part] = steps[part](Path(tmp))
    if "extract" in results:
        one_pass = opts.rows / results["extract"]["images_per_s"]
        results["backbone_pass_s"] = one_pass
        if "head" in results:
            results["epoch_vs_pass"] = results["head"]["epoch_s"] / one_pass
        if "run" in results:
            results["run_vs_pass"] = results["run"]["seconds"] / one_pass
    return results
