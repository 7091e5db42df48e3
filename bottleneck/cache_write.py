"""Writing a cache safely: one locked writer, journaled batches, atomic commits, merging shards.

Crash safety: the `.h5` file is only ever replaced whole. A writer appends each finished batch to a
journal folder beside it (`<cache>.journal/`, one atomically renamed `.npz` per batch); committing
copies the cache, applies the journal to the copy and renames the copy over the original. A process
killed at any moment (even SIGKILL) therefore leaves either the old cache or the new one, never a
half-written file, plus journal batches that the next writer applies first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from .cache import (ROW_FIELDS, SCHEMA_VERSION, STRING_DTYPE, CacheConfig, decode_strings,
                    journal_dir, library_versions, load_cache, pending_batches, read_attrs, read_failed, read_views,
                    recorded_config)
from .errors import CacheError, CacheLockedError, CacheMismatchError, InputError
from .files import write_text_atomic


class CacheWriter:
    """One writer of one cache: holds the lock, checks the configuration, journals batches, commits.

    Use as a context manager; `commit()` applies the journal atomically.
    """

    def __init__(self, path: str | Path, config: CacheConfig, info: dict | None = None,
                 class_names: tuple[str, ...] = ()):
        self.path = Path(path)
        self.config = config
        self.info = dict(info or {})
        self.class_names = tuple(class_names)  # the index's classes, sorted: the order of a new cache
        self._lock_fd: int | None = None
        self._seq = 0

    # -- locking -------------------------------------------------------------------------------
    def __enter__(self) -> CacheWriter:
        self.check_config()  # before anything is created, so a mismatch leaves no trace
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self.check_config()  # again under the lock: another writer may have created it meanwhile
            self.commit()  # batches journaled by an interrupted run come first
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.commit()  # keep whatever finished, also on Ctrl-C or an error
        finally:
            self._release_lock()

    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _acquire_lock(self) -> None:
        lock = self._lock_path()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CacheLockedError(f"cache {self.path} is being written by another process (pid {holder}); "
                                   "wait for it to finish or pass another --cache") from None
        # The kernel drops a flock when its holder dies, so a SIGKILLed writer never leaves a stale lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- configuration -------------------------------------------------------------------------
    def check_config(self) -> None:
        existing = recorded_config(self.path)
        if existing is not None:
            diff = self.config.mismatch(existing)
            if diff:
                raise CacheMismatchError(
                    f"cache {self.path} was extracted with another configuration: {diff}; a cache is never "
                    "mixed, so pass the cache's value (`auto` precision and XLA follow the cache) or another --cache "
                    "(or drop --cache for the default name of this configuration)")

    # -- reading what is there ----------------------------------------------------------------
    def existing_rows(self) -> dict[str, dict]:
        """image_id -> {sha256, label, group, path, row} for rows already committed."""
        if not self.path.exists():
            return {}
        data = load_cache(self.path, features=False)
        names = data.class_names
        views = np.where(data.views_ok, data.n_views, 0)
        return {i: {"sha256": s, "label": names[l] if l >= 0 else None, "group": g, "path": p, "row": r,
                    "views": int(v)}
                for r, (i, s, l, g, p, v) in enumerate(zip(data.image_ids, data.sha256, data.labels,
                                                           data.groups, data.paths, views))}

    def existing_views(self) -> int:
        return int(read_attrs(self.path).get("views", 0)) if self.path.exists() else 0

    def cached_features(self, row: int) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return f["features"][row]

    # -- writing --------------------------------------------------------------------------------
    def write_batch(self, rows: list[dict], features: np.ndarray | None, failed: list[tuple[str, str, str]] = (),
                    views: np.ndarray | None = None, view_lo: int = 0):
        """Journal one batch durably. rows: dicts with image_id, path, label (name|None), group, sha256,
        width, height, has_features; features: (len(rows), D) aligned with rows (ignored where
        has_features is False); failed: (path, reason, sha256); views: (len(rows), V, D) of which views
        view_lo..V (1-based) are new, or None."""
        j = journal_dir(self.path)
        if not j.is_dir():
            j.mkdir(parents=True)
            write_text_atomic(j / "config.json", json.dumps(asdict(self.config)))
        self._seq += 1  # the journal is empty on entry: __enter__ committed what an earlier run left
        n = len(rows)
        if features is None:
            features = np.zeros((n, self.config.num_features), np.float32)
        payload = {k: np.array([r[k] or "" for r in rows], dtype=str) for k in ROW_FIELDS}
        payload.update(
            label=np.array([r["label"] if r["label"] is not None else "" for r in rows], dtype=str),
            has_label=np.array([r["label"] is not None for r in rows], dtype=bool),
            size=np.array([[r["width"], r["height"]] for r in rows], dtype=np.int32).reshape(n, 2),
            has_features=np.array([r.get("has_features", True) for r in rows], dtype=bool),
            features=np.asarray(features, dtype=self.config.dtype).reshape(n, self.config.num_features),
            failed=np.array([list(x) for x in failed], dtype=str).reshape(len(failed), 3),
            view_lo=np.array(view_lo if views is not None else 0),
            views=(np.zeros((n, 0, self.config.num_features), self.config.dtype) if views is None
                   else np.asarray(views, dtype=self.config.dtype)),
        )
        target = j / f"batch-{self._seq:08d}.npz"
        tmp = target.with_name(target.name + ".tmp")  # not matched by pending_batches' batch-*.npz
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # atomic: a batch is either wholly journaled or absent

    def commit(self) -> int:
        """Apply journaled batches to a copy of the cache and swap it in atomically. Returns rows added."""
        batches = pending_batches(self.path)
        if not batches:
            return 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        if self.path.exists():
            shutil.copyfile(self.path, tmp)
        else:
            self._create(tmp)
        added = _apply_batches(tmp, batches, self.info, self.class_names)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        for b in batches:  # after the swap: re-applying a batch twice is harmless (rows keyed by image id)
            b.unlink(missing_ok=True)
        shutil.rmtree(journal_dir(self.path), ignore_errors=True)
        return added

    def _create(self, path: Path) -> None:
        d = self.config.num_features
        chunk_rows = max(1, min(1024, (1 << 20) // (d * np.dtype(self.config.dtype).itemsize)))  # ~1 MiB chunks
        with h5py.File(path, "w") as f:
            f.create_dataset("features", (0, d), maxshape=(None, d), dtype=self.config.dtype,
                             chunks=(chunk_rows, d))
            for name in ROW_FIELDS:
                f.create_dataset(name, (0,), maxshape=(None,), dtype=STRING_DTYPE, chunks=(4096,))
            f.create_dataset("label", (0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
            f.create_dataset("orig_size", (0, 2), maxshape=(None, 2), dtype=np.int32, chunks=(4096, 2))
            for name in ("path", "reason", "sha256"):
                f.create_dataset(f"failed/{name}", (0,), maxshape=(None,), dtype=STRING_DTYPE, chunks=(1024,))
            f.attrs.update({k: v for k, v in asdict(self.config).items()})
            f.attrs.update(schema_version=SCHEMA_VERSION, n_rows=0, class_names="[]",
                           created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           library_versions=json.dumps(library_versions()))


def _append(ds, values) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def _apply_batches(path: Path, batches: list[Path], info: dict, class_names: tuple[str, ...]) -> int:
    added = 0
    with h5py.File(path, "r+") as f:
        n = int(f.attrs["n_rows"])
        classes = json.loads(f.attrs["class_names"])
        # New class names are appended, never inserted, so label indices already stored stay valid.
        classes.extend(c for c in class_names if c not in classes)
        index = {k: i for i, k in enumerate(decode_strings(f["image_id"][:n]))}
        failed = dict(zip(decode_strings(f["failed/path"][:]), zip(decode_strings(f["failed/reason"][:]),
                                                             decode_strings(f["failed/sha256"][:]))))
        for batch in batches:
            with np.load(batch) as b:
                b = {k: b[k] for k in b.files}
            for name, has in zip(b["label"], b["has_label"]):
                if has and name not in classes:
                    classes.append(str(name))
            new_rows = []
            for i, image_id in enumerate(b["image_id"]):
                image_id = str(image_id)
                label = classes.index(str(b["label"][i])) if b["has_label"][i] else -1
                failed.pop(str(b["path"][i]), None)
                if image_id in index:  # refresh metadata (and features when recomputed) in place
                    r = index[image_id]
                    for k in ROW_FIELDS:
                        f[k][r] = str(b[k][i])
                    f["label"][r] = label
                    f["orig_size"][r] = b["size"][i]
                    if b["has_features"][i]:
                        f["features"][r] = b["features"][i]
                else:
                    index[image_id] = n + len(new_rows)
                    new_rows.append((i, label))
            if new_rows:
                sel = np.array([i for i, _ in new_rows])
                for k in ROW_FIELDS:
                    _append(f[k], [str(v) for v in b[k][sel]])
                _append(f["label"], np.array([lab for _, lab in new_rows], dtype=np.int32))
                _append(f["orig_size"], b["size"][sel])
                _append(f["features"], b["features"][sel])
                n += len(new_rows)
                added += len(new_rows)
            if int(b["view_lo"]) > 0:
                _store_views(f, n, [index[str(i)] for i in b["image_id"]], b["views"], int(b["view_lo"]))
            for fpath, reason, sha in b["failed"]:
                failed[str(fpath)] = (str(reason), str(sha))
        for name, col in (("path", list(failed)), ("reason", [v[0] for v in failed.values()]),
                          ("sha256", [v[1] for v in failed.values()])):
            ds = f[f"failed/{name}"]
            ds.resize(len(col), axis=0)
            if col:
                ds[:] = col
        if "views" in f and f["views"].shape[0] < n:  # rows added without views (they get them next run)
            grow = f["views"].shape[0]
            f["views"].resize(n, axis=0)
            f["views_ok"].resize(n, axis=0)
            f["views_ok"][grow:] = False
        f.attrs.update(n_rows=n, class_names=json.dumps(classes), updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        f.attrs.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in info.items()})
    return added


def _store_views(f, n: int, rows: list[int], views: np.ndarray, lo: int) -> None:
    """Write views lo..V of `rows`, growing the (N, V, D) dataset when the cache gains rows or views.

    Chunks are one row's views: training with --augment reads random rows, each read one chunk."""
    want = views.shape[1]
    d = views.shape[2]
    if "views" not in f or f["views"].shape[1] < want:
        old = f["views"][:] if "views" in f else None
        ok = f["views_ok"][:] if "views_ok" in f else np.zeros(0, bool)
        for name in ("views", "views_ok"):
            if name in f:
                del f[name]
        ds = f.create_dataset("views", (n, want, d), maxshape=(None, want, d), dtype=views.dtype,
                              chunks=(1, want, d), fillvalue=0)
        okd = f.create_dataset("views_ok", (n,), maxshape=(None,), dtype=bool, chunks=(4096,), fillvalue=False)
        if old is not None:
            ds[: old.shape[0], : old.shape[1]] = old
            # rows had every view of the old count; the new ones still missing: not complete any more
        okd[: len(ok)] = False if old is not None and old.shape[1] < want else ok
    ds, okd = f["views"], f["views_ok"]
    if ds.shape[0] < n:
        grow = ds.shape[0]
        ds.resize(n, axis=0)
        okd.resize(n, axis=0)
        okd[grow:] = False
    order = np.argsort(rows)
    sorted_rows = np.asarray(rows)[order]
    block = ds[sorted_rows]
    block[:, lo - 1:want] = views[order, lo - 1:want]
    ds[sorted_rows] = block
    okd[sorted_rows] = True
    f.attrs["views"] = want


def merge_caches(shards: list[str | Path], out: str | Path, batch_rows: int = 4096, virtual: bool = False) -> int:
    """Merge caches of one configuration (e.g. `extract --shard I/N` outputs) into `out`; returns its rows.

    Rows are keyed by image id, so merging the same shard twice, or into an existing cache, adds nothing
    twice. Views are merged when every shard has the same number."""
    if virtual:
        raise InputError("--virtual is not available in this version; drop it to merge by copying (rows are keyed "
                         "by id)")
    shards = [Path(s) for s in shards]
    if not shards:
        raise CacheError("merge needs at least one shard cache")
    datas = [load_cache(s) for s in shards]
    config = datas[0].config
    for s, d in zip(shards[1:], datas[1:]):
        diff = d.config.mismatch(config)
        if diff:
            raise CacheMismatchError(f"cannot merge {s} into {shards[0]}: {diff.replace('(cache)', f'({s.name})')}"
                                     .replace("(this run)", f"({shards[0].name})"))
    n_views = {d.n_views for d in datas}
    classes = sorted({c for d in datas for c in d.class_names})
    info = {k: datas[0].attrs.get(k, "") for k in ("dataset", "root", "source", "metadata")}
    info["merged_from"] = json.dumps([str(s) for s in shards])
    with CacheWriter(out, config, info, tuple(classes)) as writer:
        for d in datas:
            views_all = read_views(d.path) if len(n_views) == 1 and d.n_views else None
            for start in range(0, len(d.labels), batch_rows):
                sl = slice(start, start + batch_rows)
                rows = [dict(image_id=i, path=p, label=d.class_names[l] if l >= 0 else None, group=g, sha256=s,
                             width=int(w), height=int(h))
                        for i, p, l, g, s, (w, h) in zip(d.image_ids[sl], d.paths[sl], d.labels[sl], d.groups[sl],
                                                         d.sha256[sl], d.sizes[sl])]
                views = views_all[sl] if views_all is not None else None
                writer.write_batch(rows, d.features[sl], views=views, view_lo=1 if views is not None else 0)
            for path, reason in read_failed(d.path):
                writer.write_batch([], None, [(path, reason, "")])
    return int(read_attrs(Path(out))["n_rows"])
