"""The Ray engine of extraction (`bottleneck extract --engine ray`): decode in Ray tasks, run the backbone in a pool
of Ray actors, write on the driver through the same `CacheWriter` as the local engine.

    todo (after extract()'s hash/skip pass) -> Ray Dataset of (i, path)
        -> map_batches(_decode)   Ray tasks: `decode_image`, the local pipeline's own per-image decode
        -> map_batches(_Backbone) Ray actors: `create_backbone` + `make_forward` of the cache's configuration
        -> iter_batches on the driver -> CacheWriter.write_batch (journal, periodic commits, provenance)

Features are those of the local engine: same pixels, same weights (the cache's seed for `--weights none`), same
traced forward pass on batches padded to `--batch-size`. Ray is an optional extra, imported only in here.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager

import numpy as np
from tqdm.auto import tqdm

from ..cache import CacheConfig
from ..errors import ImageDecodeError, InputError

NEEDS_RAY = '--engine ray needs Ray: pip install -e ".[ray]" (or pip install "ray[data]")'
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def require_ray():
    """`ray` with Ray Data, or InputError with the install line."""
    try:
        import ray
        import ray.data  # noqa: F401  (needs the [data] extra: pyarrow)
    except ImportError:
        raise InputError(NEEDS_RAY) from None
    return ray


@contextmanager
def ray_session(address: str | None = None):
    """Connect to the Ray cluster at `address`, or start a local instance; yields (ray, seconds it took).

    A session this call opened is closed on exit (also on an error or Ctrl-C): a local instance stops, a cluster
    connection is dropped. One already open (a test fixture, a notebook) is used as is and left open."""
    ray = require_ray()
    start = time.perf_counter()
    opened = not ray.is_initialized()
    if opened:
        # Ray's own lines ("Started a local Ray instance", ...) stay off the terminal:
        # the summary and the cache's failed table say what happened; Ray's logs are in its session folder.
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        if address:
            ray.init(address=address, **quiet)
        else:  # one node: every core, decode tasks and the backbone actor share them
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    try:
        _quiet_ray_data()
        yield ray, time.perf_counter() - start
    finally:
        if opened:
            ray.shutdown()


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    for flag in ("enable_progress_bars", "print_on_execution_start", "enable_auto_log_stats",
                 "verbose_stats_logs"):
        if hasattr(ctx, flag):  # the driver's tqdm bar is the one progress display
            setattr(ctx, flag, False)
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _decode(batch: dict, size: int) -> dict:
    """A Ray task: {"i", "path"} -> {"i", "pixels" (n, S, S, 3) uint8, "width", "height", "error" ("" if decoded)}."""
    from ..images import decode_image

    decoded = [decode_image(str(path), size) for path in batch["path"]]
    return {"i": np.asarray(batch["i"], np.int64),
            "pixels": np.stack([d[0] for d in decoded]),
            "width": np.array([d[1] for d in decoded], np.int32),
            "height": np.array([d[2] for d in decoded], np.int32),
            "error": np.array([d[3] for d in decoded], dtype=object)}


class _Backbone:
    """A Ray actor: the cache configuration's backbone and forward pass, built once per worker.

    Batches are padded to `batch_size` as in the local engine, so every call runs the one traced shape."""

    def __init__(self, config: CacheConfig, weights: str, batch_size: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from ..backbones import create_backbone
        from .forward import make_forward

        model = create_backbone(config.backbone, weights, config.input_size, config.pooling, config.seed,
                                config.precision)
        self.forward = make_forward(config, model)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        from ..images import pad_batch
        from ..util import tensorflow

        tf = tensorflow()
        n = len(batch["i"])
        x = tf.cast(pad_batch(tf.convert_to_tensor(batch["pixels"]), self.batch_size), tf.float32)
        features = self.forward(x).numpy()[:n]  # (n, D) float32; pixels stay in the actor
        return {"i": batch["i"], "width": batch["width"], "height": batch["height"], "error": batch["error"],
                "features": features}


def default_workers(ray) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU Ray sees; else one, since one TF process uses every core."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (gpus, 1.0) if gpus else (1, 0.0)


def run_backbone_ray(writer, todo: list, config: CacheConfig, opts, summary) -> None:
    """The Ray counterpart of extract._run_backbone for plain vectors (no views): `todo` is [(Entry, sha256)]."""
    from .forward import check_dtype_range, entry_row

    with ray_session(opts.address) as (ray, start_seconds):
        summary.build_seconds = start_seconds  # what the Ray engine pays before extraction: starting or connecting
        workers, gpus = default_workers(ray)
        if opts.workers:
            gpus = min(1.0, gpus * workers / opts.workers) if gpus else 0.0
            workers = opts.workers
        summary.workers = workers
        size, bs = config.input_size, opts.batch_size
        items = [{"i": k, "path": str(entry.path)} for k, (entry, _) in enumerate(todo)]
        with warnings.catch_warnings():  # Ray >= 2.60 calls max_restarts "deprecated" but names no replacement
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = (ray.data.from_items(items)
                  .map_batches(_decode, fn_kwargs={"size": size}, batch_size=bs, batch_format="numpy", num_cpus=1)
                  # Resources unlike the decode tasks', so that Ray Data does not fuse decoding into the actors: decode
                  # stays a pool of parallel tasks. On CPU one TF process uses every core whatever it reserves.
                  .map_batches(_Backbone, fn_constructor_kwargs={"config": config, "weights": opts.weights,
                                                                 "batch_size": bs},
                               batch_size=bs, batch_format="numpy", num_cpus=1 if gpus else 0.5, num_gpus=gpus,
                               compute=ray.data.ActorPoolStrategy(size=workers),
                               # no actor restarts (Ray warns about them with constructor arguments in the object
                               # store): a dead worker stops the run, and a rerun resumes from what was committed
                               max_restarts=0))
        bar = tqdm(total=len(todo), desc=f"extract {config.backbone} (ray)", unit="img",
                   disable=not opts.progress, smoothing=0.1)
        first_batch_end, steady_images = None, 0
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                out = np.asarray(batch["features"], np.float32)  # (n, D)
                if first_batch_end is None:
                    check_dtype_range(out, config)
                rows, keep, failed = [], [], []
                for j, (k, reason) in enumerate(zip(batch["i"], batch["error"])):
                    entry, sha = todo[int(k)]
                    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
                    if reason:
                        failed.append((entry.rel_path, reason, sha))
                    else:
                        rows.append(entry_row(entry, sha, (int(batch["width"][j]), int(batch["height"][j]))))
                        keep.append(j)
                writer.write_batch(rows, out[keep] if keep else None, failed)
                summary.extracted += len(rows)
                summary.failed.extend((p, r) for p, r, _ in failed)
                bar.update(len(batch["i"]))
                if first_batch_end is None:
                    first_batch_end = time.perf_counter()
                else:
                    steady_images += len(batch["i"])
                if opts.strict and failed:
                    raise ImageDecodeError(f"{failed[0][0]}: {failed[0][1]} (--strict: stopping at the first bad "
                                           "image)")
        finally:
            bar.close()
        if steady_images:
            summary.steady_images += steady_images
            summary.steady_seconds += time.perf_counter() - first_batch_end
