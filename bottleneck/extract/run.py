"""Extraction: run every image once through the truncated backbone and commit the vectors to the cache.

    dataset index -> hash pass (SHA-256, skip what is cached) -> tf.data (parallel decode + resize,
    batch, prefetch) -> backbone (B, S, S, 3) -> (B, D) -> journaled batch -> atomic commit

The hash pass runs on threads from the start (`hashing.py`) while TensorFlow is imported and, when images are
certainly new, while the backbone is built; batches are journaled on a thread of their own (`JournalThread`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backbones import (
    POOLINGS,
    Replicas,
    create_backbone,
    get_spec,
    parse_weights,
    resolve_devices,
    resolve_precision,
    resolve_size,
    resolve_xla,
    visible_devices,
)
from ..cache import (
    COMMIT_SECONDS,
    CacheConfig,
    CacheWriter,
    journaled_ids,
    read_attrs,
    recorded_config,
    utf8_ok,
)
from ..errors import ImageDecodeError, InputError
from ..images import DatasetIndex, Entry, apply_view, check_views, inference_batches, pad_batch, seeds_for
from ..util import progress_bar, tensorflow
from .fingerprints import fingerprint_only, missing_fingerprints
from .forward import JournalThread, check_dtype_range, entry_row, make_forward, printable_path, unstorable_name
from .hashing import FileHashes
from .identity import IdentityNote, default_cache_path, plan_identity, record_identity

DTYPES = ("float16", "float32")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ExtractOptions:
    backbone: str = "inception_v3"
    weights: str = "imagenet"
    image_size: int | None = None
    pooling: str = "avg"
    batch_size: int = 32
    seed: int = 0
    dtype: str = "float16"
    strict: bool = False
    cache: Path | None = None
    cache_dir: Path = Path("cache")
    progress: bool = True
    views: int = 0  # extra augmented views per image (see views.py); a cache never loses views it has
    precision: str = "auto"  # compute precision, see precision.py; "auto" follows the cache when it exists
    xla: str = "auto"  # auto | on | off: compile the forward pass with XLA
    commit_seconds: float = COMMIT_SECONDS  # how often finished batches become readable rows of the cache
    engine: str = "local"  # local | ray (extract_ray.py); not part of the cache's configuration: same features
    address: str | None = None  # --engine ray: the cluster to connect to (None: start a local Ray instance)
    workers: int | None = None  # --engine ray: backbone actors (None: one per GPU, else 1)
    devices: str | None = None  # --devices: all (None), cpu, GPU indices or device names; several: replicas
    append: bool = False  # --append: add this dataset to a cache of another root or CSV on purpose (identity.py)


@dataclass
class ExtractSummary:
    cache: Path
    total: int  # images in the index
    extracted: int = 0  # features computed by the backbone in this run
    already_cached: int = 0  # same image id and bytes already in the cache
    recovered: int = 0  # rows an interrupted run journaled, committed by this run first (no inference)
    reused: int = 0  # same bytes cached under another id: vector copied, no inference
    views: int = 0  # views per image the cache holds after the run
    views_added: int = 0  # cached images that got (more) views in this run, plain vector not recomputed
    fingerprinted: int = 0  # cached images that got their missing fingerprint in this run (decoded, no backbone)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    seconds: float = 0.0  # whole backbone stage, model construction included
    build_seconds: float = 0.0  # building the backbone (and loading its weights)
    steady_images: int = 0  # images after the first batch (whose time includes tracing the forward pass)
    steady_seconds: float = 0.0  # time those images took
    precision: str = ""  # what the backbone computed in
    xla: bool = False
    rows: int = 0  # rows in the cache after the run
    rows_without_image: int = 0
    images_without_row: int = 0
    engine: str = "local"  # which engine computed the features (recorded here, not in the cache's configuration)
    workers: int = 1  # backbone workers (Ray actors) of the ray engine
    devices: list[str] = field(default_factory=list)  # where the local engine ran the backbone (one replica each)
    identity: IdentityNote | None = None  # the cache's dataset identity: adopted, appended, labels/groups changed

    @property
    def images_per_s(self) -> float:
        busy = self.seconds - self.build_seconds
        return self.extracted / busy if busy > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Throughput once the forward pass is traced: what a long extraction runs at."""
        return self.steady_images / self.steady_seconds if self.steady_seconds > 0 else 0.0


def check_engine(engine: str, views: int = 0, workers: int | None = None, address: str | None = None) -> str:
    """Fail early (before hashing) on an engine that cannot run: unknown, Ray not installed, options it lacks, a
    cluster address where nothing answers."""
    if engine not in ENGINES:
        raise InputError(f"--engine should be one of {', '.join(ENGINES)}; received {engine!r}")
    if engine == "ray":
        from .ray_engine import check_address, require_ray

        require_ray(address)
        if views:
            raise InputError("--views is not available with --engine ray; extract the views with --engine local "
                             "(same cache, same features)")
        if workers is not None and workers < 1:
            raise InputError(f"--workers should be a positive integer; received {workers}")
        check_address(address)
    else:  # Ray's options would be silently ignored by the local engine
        given = [flag for flag, value in (("--address", address), ("--workers", workers)) if value is not None]
        if given:
            raise InputError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only to --engine ray; "
                             "add --engine ray (pip install -e "
                             f"\".[ray]\"), or leave {' and '.join(given)} out to extract in this process")
    return engine


def make_config(opts: ExtractOptions, recorded: CacheConfig | None = None) -> CacheConfig:
    """The cache configuration of `opts`; `auto` precision and XLA take `recorded` (the existing cache's)."""
    spec = get_spec(opts.backbone)
    if opts.dtype not in DTYPES:
        raise InputError(f"--dtype should be one of {', '.join(DTYPES)}; received {opts.dtype!r}")
    if opts.batch_size < 1:
        raise InputError(f"--batch-size should be a positive integer; received {opts.batch_size}")
    if opts.pooling not in POOLINGS:
        raise InputError(f"--pooling should be one of {', '.join(POOLINGS)}; received {opts.pooling!r}")
    ref = parse_weights(opts.weights)
    precision = resolve_precision(opts.precision, recorded and recorded.precision)
    return CacheConfig(backbone=spec.name, weights=ref.label, weights_sha256=ref.sha256, seed=int(opts.seed),
                       input_size=resolve_size(spec, opts.image_size), pooling=opts.pooling,
                       preprocessing=spec.preprocessing, dtype=opts.dtype, num_features=spec.num_features,
                       precision=precision, xla=resolve_xla(opts.xla, spec.name, precision,
                                                            recorded.xla if recorded else None))


def extract(index: DatasetIndex, opts: ExtractOptions = ExtractOptions()) -> ExtractSummary:
    """Extract bottlenecks for every image of `index` not already cached; return what happened."""
    # The file name does not depend on the compute precision: resolve that against what the file records.
    path = (Path(opts.cache) if opts.cache else
            default_cache_path(index, make_config(replace(opts, precision="float32", xla="off")), opts.cache_dir))
    plan = plan_identity(path, index, opts.append)  # a cache of another dataset is refused before any work
    check_views(opts.views)
    check_engine(opts.engine, opts.views, opts.workers, opts.address)
    # A name the cache's UTF-8 columns cannot hold is listed as failed (by a readable escaped form), never
    # stored under another name that fine-tune and predict could not reopen: see forward.unstorable_name.
    why = [unstorable_name(e) for e in index.entries]  # once per entry: "" when its names can be stored
    entries = [e for e, w in zip(index.entries, why) if not w]
    bad_names = [(printable_path(e.rel_path), w, "") for e, w in zip(index.entries, why) if w]
    with FileHashes(entries, opts.progress) as hashing:  # read on threads while TensorFlow and the backbone load
        config = make_config(opts, recorded_config(path))
        summary = ExtractSummary(cache=path, total=len(index.entries),
                                 rows_without_image=len(index.rows_without_image),
                                 images_without_row=len(index.images_without_row), precision=config.precision,
                                 xla=config.xla, engine=opts.engine)
        devices = _chosen_devices(opts)
        recovered = journaled_ids(path)  # what entering the writer commits first: the rows of an interrupted run
        with CacheWriter(path, config, _info(index, plan), tuple(c for c in index.class_names if utf8_ok(c)),
                         opts.commit_seconds) as writer:
            summary.views = n_views = max(opts.views, writer.existing_views())  # new rows get every view
            built = (_build(config, opts, summary, devices)
                     if opts.engine == "local" and _certain_work(writer, entries, n_views) else None)
            hashes = hashing.result()
            existing, by_sha = writer.lookup([e.image_id for e in entries], [sha for sha, _ in hashes])
            summary.identity = record_identity(writer, plan, index, entries, existing, opts.append)  # relabels too
            todo, view_todo, updates, reused, unreadable = _sort_entries(entries, hashes, existing, by_sha,
                                                                         n_views, summary, bad_names, recovered)
            if opts.strict and unreadable:
                raise ImageDecodeError(f"{unreadable[0][0]}: {unreadable[0][1]} (--strict)")
            unprinted = _journal_metadata(writer, updates, reused, unreadable)
            summary.reused = len(reused)
            summary.failed.extend((p, r) for p, r, _ in unreadable)
            if (todo or view_todo) and opts.engine == "ray":
                if view_todo or n_views:
                    raise InputError(f"cache {path} holds {n_views} augmented views per image, which --engine ray "
                                     "does not compute; extend it with --engine local")
                from .ray_engine import run_backbone_ray

                start = time.perf_counter()
                run_backbone_ray(writer, todo, config, opts, summary)
                summary.seconds = time.perf_counter() - start
            elif todo or view_todo:
                model, replicas = built or _build(config, opts, summary, devices)
                start = time.perf_counter()
                if todo:
                    _run_backbone(writer, model, todo, tuple(range(n_views + 1)), config, opts, summary, replicas)
                for first, items in sorted(view_todo.items()):
                    _run_backbone(writer, model, items, tuple(range(first, n_views + 1)), config, opts, summary,
                                  replicas)
                    summary.views_added += len(items)
                summary.seconds = summary.build_seconds + time.perf_counter() - start
            fingerprint_only(writer, missing_fingerprints(entries, hashes, existing, view_todo) + unprinted,
                             config, opts, summary)
    summary.rows = int(read_attrs(path)["n_rows"]) if path.exists() else 0
    return summary


def _info(index: DatasetIndex, plan) -> dict:
    """The dataset attributes a cache records: where its images come from, and its identity plan's."""
    info = dict(dataset=index.name, root=str(index.root), source=index.source,
                metadata=str(index.metadata or ""), rows_without_image=len(index.rows_without_image),
                images_without_row=len(index.images_without_row),
                # which shard of which whole index (every shard shares the fingerprint): `merge` checks them
                shard=index.shard, index_fingerprint=index.fingerprint, index_images=index.total_images)
    info.update(plan.info)
    return info


def _certain_work(writer: CacheWriter, entries: list[Entry], n_views: int) -> bool:
    """Whether the backbone will run, as far as image ids tell before any file is hashed: a new cache, an image id
    the cache lacks (new, or failed before), or a cached row that lacks views. Then it is built while the files
    hash. Bytes changed under a cached id show only once hashed: then it is built after. (A new id whose bytes
    are cached under another, or an unreadable new file, needs no backbone: built for nothing, a rare case.)"""
    if not entries:
        return False
    if not writer.path.exists():
        return True
    found, _ = writer.lookup([e.image_id for e in entries], [""] * len(entries))
    return len(found) < len(entries) or any(row["views"] < n_views for row in found.values())


def _chosen_devices(opts: ExtractOptions) -> list[str] | None:
    """An explicit --devices, checked before any work; None: resolved when the backbone is built."""
    if opts.devices in (None, "all"):
        return None
    if opts.engine == "ray":
        raise InputError("--devices applies to --engine local; with --engine ray each backbone worker takes one "
                         "GPU (choose how many with --workers)")
    return resolve_devices(opts.devices, *visible_devices())


def _sort_entries(entries: list[Entry], hashes, existing: dict, by_sha: dict, n_views: int, summary: ExtractSummary,
                  bad_names: list, recovered: set[str] = frozenset()):
    """Each hashed entry to what it needs: the backbone (`todo`), only views it lacks (`view_todo`, by first missing
    view), only new metadata (`updates`), a copy of a vector cached under another id (`reused`), or nothing; an
    unreadable file joins `bad_names` in `unreadable`. Counts the cached ones in `summary`, those `recovered` from
    the journal by this run apart."""
    todo: list[tuple[Entry, str]] = []
    view_todo: dict[int, list[tuple[Entry, str]]] = {}  # first missing view -> cached rows lacking views
    updates, reused, unreadable = [], [], list(bad_names)
    for entry, (sha, err) in zip(entries, hashes):
        if err:
            unreadable.append((entry.rel_path, err, ""))
            continue
        old = existing.get(entry.image_id)
        if old is not None and old["sha256"] == sha:
            if entry.image_id in recovered:
                summary.recovered += 1
            else:
                summary.already_cached += 1
            if _row_changed(old, entry):
                updates.append(entry_row(entry, sha, has_features=False))
            if old["views"] < n_views:
                view_todo.setdefault(old["views"] + 1, []).append((entry, sha))
        elif sha in by_sha and old is None and n_views == 0:
            reused.append((entry, sha, by_sha[sha]))
        else:
            todo.append((entry, sha))
    return todo, view_todo, updates, reused, unreadable


def _row_changed(old: dict, entry: Entry) -> bool:
    """Whether a cached row (`CacheWriter.lookup`'s record) differs from the entry in what needs no inference: label,
    group, path, or a metadata column (one the cache does not hold yet counts as changed)."""
    if (old["label"], old["group"], old["path"]) != (entry.label, entry.group, entry.rel_path):
        return True
    return any(old["meta"].get(column) != value for column, value in entry.meta)


def _journal_metadata(writer: CacheWriter, updates, reused, unreadable) -> list[tuple[Entry, str]]:
    """Rows that need no inference: label/group/metadata changes, and images whose bytes are cached under another
    id (vector and fingerprint copied); returns those of the latter whose cached row has no fingerprint."""
    rows, feats, unprinted = list(updates), [np.zeros(writer.config.num_features, np.float32)] * len(updates), []
    for entry, sha, src_row in reused:
        phash = writer.cached_phash(src_row)
        rows.append(entry_row(entry, sha, phash=phash or None))
        feats.append(writer.cached_features(src_row).astype(np.float32))
        if not phash:
            unprinted.append((entry, sha))
    if rows or unreadable:
        writer.write_batch(rows, np.stack(feats) if feats else None, unreadable)
    return unprinted



def _build(config: CacheConfig, opts: ExtractOptions, summary, devices: list[str] | None = None):
    """The backbone, built on its devices (one replica each under MirroredStrategy when there are several)."""
    tensorflow()  # its import (seconds) is start-up, not building time
    start = time.perf_counter()
    replicas = Replicas(devices if devices is not None else resolve_devices(opts.devices, *visible_devices()))
    with replicas.scope():
        model = create_backbone(config.backbone, opts.weights, config.input_size, config.pooling, config.seed,
                                config.precision)
    summary.build_seconds = time.perf_counter() - start
    summary.devices = list(replicas.devices)
    return model, replicas



def _run_backbone(writer: CacheWriter, model, todo, ks: tuple[int, ...], config: CacheConfig,
                  opts: ExtractOptions, summary, replicas: Replicas) -> None:
    """Decode `todo`'s images once and run views `ks` of each (0 = plain) through the backbone in one pass,
    each batch split across `replicas` when there are several."""
    tf = tensorflow()

    forward = make_forward(config, model)
    batches = inference_batches([str(e.path) for e, _ in todo], config.input_size, opts.batch_size,
                                fingerprints=True)

    @tf.function(reduce_retracing=True)
    def infer(x, seeds):  # (B, S, S, 3) uint8 -> (B, len(ks), D) float32: every view in one backbone call
        x = tf.cast(x, tf.float32)
        out = forward(tf.concat([x if k == 0 else apply_view(x, k, seeds) for k in ks], axis=0))
        return tf.transpose(tf.reshape(out, (len(ks), -1, out.shape[-1])), (1, 0, 2))

    bar = progress_bar(total=len(todo), desc=f"extract {config.backbone}", unit="img", enabled=opts.progress,
                       smoothing=0.1)
    with JournalThread(writer) as journal:  # the journal and its commits run beside the forward pass
        first_batch_end, steady_images = _forward_loop(journal, batches, infer, todo, ks, config, opts, summary,
                                                       replicas, bar)
    bar.close()
    if steady_images:
        summary.steady_images += steady_images
        summary.steady_seconds += time.perf_counter() - first_batch_end


def _forward_loop(journal: JournalThread, batches, infer, todo, ks: tuple[int, ...], config: CacheConfig,
                  opts: ExtractOptions, summary, replicas: Replicas, bar) -> tuple[float | None, int]:
    """Each decoded batch through `infer` and into the journal; (end of the first batch, images after it)."""
    plain = ks[0] == 0
    n_views = ks[-1] if ks[-1] > 0 else 0
    padded = replicas.batch_size(opts.batch_size)  # every replica gets an equal slice
    done, first_batch_end, steady_images = 0, None, 0
    for pixels, w, h, err, phash in batches:
        n = int(pixels.shape[0])
        seeds = seeds_for([todo[done + j][1] for j in range(n)] + ["0"] * (padded - n), config.seed)
        out = np.asarray(replicas.call(infer, pad_batch(pixels, padded), seeds))[:n]  # (n, len(ks), D)
        if not done:
            check_dtype_range(out, config)
        rows, keep, failed = [], [], []
        reasons, phash, w, h = err.numpy(), phash.numpy(), w.numpy(), h.numpy()  # not a tensor lookup per image
        for j in range(n):
            entry, sha = todo[done + j]
            reason = reasons[j].decode()
            if reason:
                failed.append((entry.rel_path, reason, sha))
            else:
                rows.append(entry_row(entry, sha, (int(w[j]), int(h[j])), has_features=plain, phash=phash[j]))
                keep.append(j)
        views = None
        if n_views:
            views = np.zeros((len(keep), n_views, config.num_features), np.float32)
            views[:, ks[1 if plain else 0] - 1:] = out[keep][:, 1 if plain else 0:]
        journal.put(rows, out[keep, 0] if keep and plain else None, failed, views=views,
                    view_lo=(ks[1] if plain and len(ks) > 1 else ks[0]) if n_views else 0)
        summary.extracted += len(rows) if plain else 0
        summary.failed.extend((p, r) for p, r, _ in failed)
        done += n
        bar.update(n)
        if first_batch_end is None:
            first_batch_end = time.perf_counter()
        else:
            steady_images += n
        if opts.strict and failed:
            bar.close()
            raise ImageDecodeError(f"{failed[0][0]}: {failed[0][1]} (--strict: stopping at the first bad image)")
    return first_batch_end, steady_images
