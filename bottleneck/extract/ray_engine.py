"""The Ray engine of extraction (`bottleneck extract --engine ray`): decode in Ray tasks, run the backbone in a pool
of Ray actors, write on the driver through the same `CacheWriter` as the local engine.

    todo (after extract()'s hash/skip pass) -> Ray Dataset of (i, path)
        -> map_batches(_decode)   Ray tasks: `decode_image`, the local pipeline's own per-image decode, and the
                                  fingerprint of those pixels (`fingerprint_of`, as the local pipeline)
        -> map_batches(_Backbone) Ray actors: `create_backbone` + `make_forward` of the cache's configuration
        -> iter_batches on the driver -> `JournalThread` (as the local engine: `CacheWriter.write_batch` on a thread
                                  of its own, one batch of queue: journal, periodic commits, provenance)

Features are those of the local engine: same pixels, same weights (the cache's seed for `--weights none`), same
traced forward pass on batches padded to `--batch-size`. Ray is an optional extra, imported only in here.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..cache import CacheConfig
from ..errors import ImageDecodeError, InputError
from ..util import progress_bar

NEEDS_RAY = '--engine ray needs Ray: pip install -e ".[ray]" (or pip install "ray[data]")'
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


# Ray's connect timeouts when it joins a cluster (`--address`), so that an address where no Ray answers fails in
# about 12 s instead of retrying for ever. Its C++ side reads them once, when `ray` is first imported; a user's own
# values win. (A `ray://` address goes through Ray Client, which gives up after its own three tries, about 30 s.)
CONNECT_TIMEOUTS = {"RAY_gcs_rpc_server_connect_timeout_s": "3", "RAY_py_gcs_connect_timeout_s": "5",
                    "RAY_gcs_server_port_wait_time_s": "1"}
REACH_SECONDS = 5.0  # the TCP connect that checks an address before Ray is asked to join it
RAY_CLIENT_PORT = 10001  # the port of a `ray://` address without one (Ray Client's default)
ADDRESS_FORMS = "auto, HOST:PORT or ray://HOST[:PORT]"


def ray_address_file(environ=os.environ) -> Path:
    """Where `ray start --head` records the address of the cluster it started (what `ray.init(address="auto")`
    reads): ray_current_cluster in Ray's temporary folder."""
    tmp = environ.get("RAY_TMPDIR") or (environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(tmp or "/tmp") / "ray" / "ray_current_cluster"


class RayAddress(NamedTuple):
    target: str  # what ray.init is given: HOST:PORT or ray://HOST:PORT
    host: str
    port: int
    origin: str  # where it came from, for messages: "", " (from RAY_ADDRESS)", " (--address auto, from FILE)"


def resolve_address(address: str | None, environ=os.environ) -> RayAddress | None:
    """The cluster `--address` names, or None for a local instance (no address, nor RAY_ADDRESS, which Ray itself
    would follow; or `local`). `auto` is the cluster started on this machine: RAY_ADDRESS when set, else the address
    `ray start --head` recorded (Ray's own `auto` also searches the process list; this does not)."""
    origin = ""
    if not address:
        address, origin = environ.get("RAY_ADDRESS") or None, " (from RAY_ADDRESS)"
    if address == "auto" and environ.get("RAY_ADDRESS", "auto") != "auto":
        address, origin = environ["RAY_ADDRESS"], " (--address auto, from RAY_ADDRESS)"
    elif address == "auto":
        recorded = ray_address_file(environ)
        try:
            address, origin = recorded.read_text().strip(), f" (--address auto, from {recorded})"
        except OSError:
            raise InputError(f"--address auto: no Ray cluster was started on this machine (no RAY_ADDRESS, no "
                             f"{recorded}); start one with `ray start --head`, or drop --address to start a local "
                             "Ray instance") from None
    if address in (None, "local"):
        return None
    rest = address.removeprefix("ray://")
    if rest.startswith("["):  # [::1]:6379
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not port and address.startswith("ray://"):
        port = str(RAY_CLIENT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address should be {ADDRESS_FORMS}; received {address!r}{origin}")
    return RayAddress(address, host, int(port), origin)


def check_address(address: str | None, environ=os.environ, seconds: float = REACH_SECONDS) -> str | None:
    """The address to give ray.init (None: start a local instance), once something accepts a TCP connection there
    within `seconds`; InputError naming the address and the fix when nothing does. Needs no Ray."""
    resolved = resolve_address(address, environ)
    if resolved is None:
        return None
    try:
        socket.create_connection((resolved.host, resolved.port), timeout=seconds).close()
    except OSError as exc:
        reason = (f"nothing answered within {seconds:g} s" if isinstance(exc, TimeoutError) else
                  exc.strerror or str(exc) or type(exc).__name__)
        port = "" if resolved.target.startswith("ray://") else f" --port {resolved.port}"
        raise InputError(f"no Ray cluster at {resolved.target}{resolved.origin}: {reason}; start one there with "
                         f"`ray start --head{port}`, or drop --address to start a local Ray instance") from None
    return resolved.target


def require_ray(address: str | None = None):
    """`ray` with Ray Data, or InputError with the install line. With an `address`, Ray's connect timeouts are set
    first (CONNECT_TIMEOUTS): they count only if set before Ray is first imported."""
    if address or os.environ.get("RAY_ADDRESS"):
        for name, value in CONNECT_TIMEOUTS.items():
            os.environ.setdefault(name, value)
    try:
        import ray
        import ray.data  # noqa: F401  (needs the [data] extra: pyarrow)
    except ImportError:
        raise InputError(NEEDS_RAY) from None
    return ray


@contextmanager
def ray_session(address: str | None = None):
    """Connect to the Ray cluster at `address` (checked first, joined in bounded time: `check_address`, `connect`),
    or start a local instance; yields (ray, seconds it took).

    A session this call opened is closed on exit (also on an error or Ctrl-C): a local instance stops, a cluster
    connection is dropped. One already open (a test fixture, a notebook) is used as is and left open."""
    ray = require_ray(address)
    start = time.perf_counter()
    opened = not ray.is_initialized()
    if opened:
        # Ray's own lines ("Started a local Ray instance", ...) stay off the terminal:
        # the summary and the cache's failed table say what happened; Ray's logs are in its session folder.
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        target = check_address(address)
        if target:
            connect(ray, target, quiet)
        else:  # one node: every core, decode tasks and the backbone actor share them
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    try:
        _quiet_ray_data()
        yield ray, time.perf_counter() - start
    finally:
        if opened:
            ray.shutdown()


def connect(ray, address: str, quiet: dict) -> None:
    """ray.init against a cluster, in bounded time (CONNECT_TIMEOUTS): one line when it fails. Ray's C++ side
    prints a warning per failed try straight to file descriptor 2; those go to a temporary file, not the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                ray.init(address=address, **quiet)
            except Exception as exc:  # noqa: BLE001 -- Ray raises ConnectionError, RuntimeError, ...: one line
                lines = str(exc).strip().splitlines()
                reason = lines[0] if lines else type(exc).__name__
                ray.shutdown()  # whatever the failed try left running (its threads, a half-made client)
                raise InputError(f"cannot join the Ray cluster at {address}: {reason}; check that a Ray head runs "
                                 f"there (`ray status --address {address}`), or drop --address to start a local Ray "
                                 "instance") from None
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


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
    """A Ray task: {"i", "path"} -> {"i", "pixels" (n, S, S, 3) uint8, "width", "height", "error" ("" if decoded),
    "phash" (n,) uint64}."""
    from ..images import decode_image, fingerprint_of

    decoded = [decode_image(str(path), size) for path in batch["path"]]
    return {"i": np.asarray(batch["i"], np.int64),
            "phash": np.array([fingerprint_of(d[0], d[3]) for d in decoded], np.uint64),
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
                "phash": batch["phash"], "features": features}


def default_workers(ray) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU Ray sees; else one, since one TF process uses every core."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (gpus, 1.0) if gpus else (1, 0.0)


def run_backbone_ray(writer, todo: list, config: CacheConfig, opts, summary) -> None:
    """The Ray counterpart of extract._run_backbone for plain vectors (no views): `todo` is [(Entry, sha256)]."""
    from .forward import JournalThread

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
        bar = progress_bar(total=len(todo), desc=f"extract {config.backbone} (ray)", unit="img",
                           enabled=opts.progress, smoothing=0.1)
        try:
            with JournalThread(writer) as journal:  # the journal and its commits beside the driver's loop
                first_batch_end, steady_images = _drain(ds, journal, todo, config, opts, summary, bar)
        finally:
            bar.close()
        if steady_images:
            summary.steady_images += steady_images
            summary.steady_seconds += time.perf_counter() - first_batch_end


def _drain(ds, journal, todo: list, config: CacheConfig, opts, summary, bar) -> tuple[float | None, int]:
    """Each batch the actors computed into the journal thread; (end of the first batch, images after it)."""
    from .forward import check_dtype_range, entry_row

    first_batch_end, steady_images = None, 0
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
                rows.append(entry_row(entry, sha, (int(batch["width"][j]), int(batch["height"][j])),
                                      phash=batch["phash"][j]))
                keep.append(j)
        journal.put(rows, out[keep] if keep else None, failed)
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
    return first_batch_end, steady_images
