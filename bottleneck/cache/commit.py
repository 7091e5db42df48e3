"""A commit's own work: apply journaled batches to an open cache file and keep track of its committed rows.

`cache_write.CacheWriter` decides when and how safely (in place under an undo journal, or a new file renamed into
place); this module is what happens inside the file: rows refreshed in place or appended past the committed
count, views stored, the failed-image table, and `n_rows` advanced last.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from .batch import ROW_FIELDS, batch_meta, batch_phash
from .handle import SCHEMA_VERSION
from .row_keys import KEYS, key_array, keys_for, matching_rows, read_keys
from .store import META, PHASH, STRING_DTYPE, decode_strings, library_versions, meta_dataset, stored_meta_columns


@dataclass
class CommittedState:
    """What a commit needs to know of the committed rows, read once per writer from 16 bytes a row (the row
    keys), never from every stored id."""

    n: int
    classes: list[str]
    failed: dict[str, tuple[str, str]]  # path -> (reason, sha256)
    id_keys: np.ndarray | None = None  # id keys of the rows committed when the writer started (read when needed)
    known: dict[str, int] = field(default_factory=dict)  # ids this writer has placed: image id -> row
    absent: set[str] = field(default_factory=set)  # ids this writer looked up and did not find
    meta_columns: list[str] = field(default_factory=list)  # the cache's metadata columns, in order

    @classmethod
    def read(cls, f) -> CommittedState:
        failed = dict(zip(decode_strings(f["failed/path"][:]), zip(decode_strings(f["failed/reason"][:]),
                                                                   decode_strings(f["failed/sha256"][:]))))
        return cls(int(f.attrs["n_rows"]), json.loads(f.attrs["class_names"]), failed,
                   meta_columns=stored_meta_columns(f))

    def resolve(self, f, image_ids: list[str], keys: np.ndarray) -> list[int | None]:
        """The row of each id (`keys`: their `id_key`s), or None for an id not in the cache; a key match is
        confirmed by reading that row's id. Ids looked up before (by `CacheWriter.lookup` or an earlier batch) cost
        nothing."""
        at = {i: k for k, i in enumerate(image_ids) if i not in self.known and i not in self.absent}
        todo = list(at)
        if todo:
            if self.id_keys is None:
                self.id_keys = read_keys(f, self.n)[:, 0]
            if not len(self.id_keys):  # nothing was committed when the writer started
                self.absent.update(todo)
                return [self.known.get(i) for i in image_ids]
            keys = keys[list(at.values())]
            hits = matching_rows(self.id_keys, keys)
            for image_id, key in zip(todo, keys):
                for r in hits.get(key, ()):
                    if decode_strings(f["image_id"][r:r + 1])[0] == image_id:
                        self.known[image_id] = r
                        break
                else:
                    self.absent.add(image_id)
        return [self.known.get(i) for i in image_ids]



def merged(batches: Iterable[dict], max_rows: int = 8192):
    """Consecutive batches (dicts of arrays) joined into fewer, larger ones that apply exactly as the sequence
    would: a batch joins the one before only when both have the same arrays, metadata columns and views, no image
    id of it is already there, and none of its paths failed there (applied in turn, its row would clear that
    failure); at most `max_rows` rows each. A commit of many small batches writes each dataset a few times."""
    group: list[dict] = []
    ids: set[str] = set()
    failed: set[str] = set()
    rows = 0
    for b in batches:
        if group and rows + len(b["image_id"]) <= max_rows and _same_kind(group[0], b) \
                and ids.isdisjoint(b["image_id"].tolist()) and failed.isdisjoint(b["path"].tolist()):
            group.append(b)
            rows += len(b["image_id"])
        else:
            if group:
                yield _joined(group)
            group, ids, failed, rows = [b], set(), set(), len(b["image_id"])
        ids.update(b["image_id"].tolist())
        failed.update(b["failed"][:, 0].tolist())
    if group:
        yield _joined(group)


def _same_kind(a: dict, b: dict) -> bool:
    return (set(a) == set(b) and a["meta_names"].tolist() == b["meta_names"].tolist()
            and int(a["view_lo"]) == int(b["view_lo"]) and a["views"].shape[1:] == b["views"].shape[1:])


def _joined(group: list[dict]) -> dict:
    if len(group) == 1:
        return group[0]
    fixed = ("meta_names", "view_lo")  # the same in every batch of a group
    return {k: group[0][k] if k in fixed else np.concatenate([g[k] for g in group]) for k in group[0]}


def drop_tracebacks(exc: BaseException | None) -> None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        drop_tracebacks(exc.__cause__)
        exc = exc.__context__


@contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C until the block ends, then raise it: a commit is never cut off by one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def create_layout(f, config) -> None:
    """The empty datasets and attributes of a new cache of `config` in the open file `f` (its first commit)."""
    d = config.num_features
    chunk_rows = max(1, min(1024, (1 << 20) // (d * np.dtype(config.dtype).itemsize)))  # ~1 MiB chunks
    f.create_dataset("features", (0, d), maxshape=(None, d), dtype=config.dtype, chunks=(chunk_rows, d))
    for name in ROW_FIELDS:
        f.create_dataset(name, (0,), maxshape=(None,), dtype=STRING_DTYPE, chunks=(4096,))
    f.create_group(META)  # one column per metadata column, created by the commit that first brings it
    f.create_dataset("label", (0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
    f.create_dataset("orig_size", (0, 2), maxshape=(None, 2), dtype=np.int32, chunks=(4096, 2))
    f.create_dataset(KEYS, (0, 2), maxshape=(None, 2), dtype=np.uint64, chunks=(8192, 2))
    for name in ("path", "reason", "sha256"):
        f.create_dataset(f"failed/{name}", (0,), maxshape=(None,), dtype=STRING_DTYPE, chunks=(1024,))
    f.attrs.update({k: v for k, v in asdict(config).items()})
    f.attrs.update(schema_version=SCHEMA_VERSION, n_rows=0, class_names="[]",
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   library_versions=json.dumps(library_versions(), allow_nan=False))


def apply_batches(f, batches: Iterable[dict], info: dict, class_names: tuple[str, ...], state: CommittedState) -> int:
    """Apply journaled batches (their arrays, in order: see `journal.merged`) to the open file `f`, keeping `state`
    in step; returns the rows added.

    Rows past the committed count are written first and `n_rows` is advanced last, so a reader of the
    committed count never sees a row that is not whole."""
    n, classes, failed = state.n, state.classes, state.failed
    failed_before = dict(failed)
    _ensure_row_keys(f, n)
    # New class names are appended, never inserted, so label indices already stored stay valid.
    classes.extend(c for c in class_names if c not in classes)
    for batch in batches:
        n = _apply_batch(f, batch, n, state)
    if failed != failed_before:
        _write_failed(f, failed)
    if "views" in f and f["views"].shape[0] < n:  # rows added without views (they get them next run)
        grow = f["views"].shape[0]
        f["views"].resize(n, axis=0)
        f["views_ok"].resize(n, axis=0)
        f["views_ok"][grow:] = False
    f.attrs.update({k: (json.dumps(v, allow_nan=False) if isinstance(v, (dict, list)) else v) for k, v in info.items()})
    f.attrs.update(class_names=json.dumps(classes, allow_nan=False),
                   meta_columns=json.dumps(state.meta_columns, allow_nan=False),
                   updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    f.attrs["n_rows"] = n  # last: the committed count
    added = n - state.n
    state.n = n
    return added


def _ensure_row_keys(f, n: int) -> None:
    """The row-key dataset, rebuilt from the rows for a cache from before the keys (or grown by such a version)."""
    if KEYS not in f or f[KEYS].shape[0] < n:
        keys = read_keys(f, n)
        if KEYS in f:
            del f[KEYS]
        f.create_dataset(KEYS, data=keys, maxshape=(None, 2), chunks=(8192, 2))


def _apply_batch(f, b: dict, n: int, state: CommittedState) -> int:
    """One journaled batch `b`: its known ids refreshed in place, its new ones appended past row `n`, its views and
    failed images recorded; returns the row count after it (still uncommitted: `n_rows` is the caller's)."""
    classes, failed = state.classes, state.failed
    labels, has_label = b["label"].tolist(), b["has_label"].tolist()
    for name in dict.fromkeys(name for name, has in zip(labels, has_label) if has):
        if name not in classes:
            classes.append(name)
    index = {c: k for k, c in enumerate(classes)}
    meta_names, meta = batch_meta(b)  # (C,), (rows, C)
    for c in meta_names:
        if c not in state.meta_columns:  # columns are only ever added, as classes are
            _add_meta_column(f, c, n)
            state.meta_columns.append(c)
    phash, has_phash = batch_phash(b)
    if has_phash.any() and PHASH not in f:  # created by the first batch that brings fingerprints
        add_phash_column(f, n)
    ids = b["image_id"].tolist()
    id_keys = key_array(ids)
    if failed:
        for path in b["path"].tolist():
            failed.pop(path, None)
    found = state.resolve(f, ids, id_keys)
    label_of = [index[name] if has else -1 for name, has in zip(labels, has_label)]
    if ids and not any(r is not None for r in found) and len(set(ids)) == len(ids):  # all new: the usual batch
        rows_of_batch = list(range(n, n + len(ids)))
        state.known.update(zip(ids, rows_of_batch))
        _append_new_rows(f, b, n, None, label_of, meta_names, meta, state.meta_columns, id_keys)
        n += len(ids)
    else:
        new_rows, rows_of_batch = [], []
        for i, (image_id, r) in enumerate(zip(ids, found)):
            r = state.known.get(image_id, r)  # an id twice in one batch: its first copy was appended above
            if r is not None:
                rows_of_batch.append(r)
                _refresh_row(f, b, i, r, image_id, label_of[i], meta_names, meta[i])
                if has_phash[i]:
                    _phash_at(f, r + 1)[r] = phash[i]
            else:
                rows_of_batch.append(n + len(new_rows))
                state.known[image_id] = n + len(new_rows)
                new_rows.append(i)
        if new_rows:
            _append_new_rows(f, b, n, np.array(new_rows), [label_of[i] for i in new_rows], meta_names, meta,
                             state.meta_columns, id_keys)
            n += len(new_rows)
    if int(b["view_lo"]) > 0:
        _store_views(f, n, rows_of_batch, b["views"], int(b["view_lo"]))
    for fpath, reason, sha in b["failed"]:
        failed[str(fpath)] = (str(reason), str(sha))
    return n


def _refresh_row(f, b: dict, i: int, r: int, image_id: str, label: int, meta_names: list[str], meta_row) -> None:
    """Row `r` of the cache rewritten from row `i` of batch `b`: metadata, and features when recomputed."""
    for k in ROW_FIELDS:
        f[k][r] = str(b[k][i])
    for c, value in zip(meta_names, meta_row):  # columns the batch lacks keep their values
        f[meta_dataset(c)][r] = str(value)
    f[KEYS][r] = keys_for([image_id], [b["sha256"][i]])[0]
    f["label"][r] = label
    f["orig_size"][r] = b["size"][i]
    if b["has_features"][i]:
        f["features"][r] = b["features"][i]


def _append_new_rows(f, b: dict, n: int, sel: np.ndarray | None, labels: list[int], meta_names: list[str],
                     meta: np.ndarray, meta_columns: list[str], id_keys: np.ndarray) -> None:
    """The batch rows `sel` (all of them, in order, when None) written as cache rows n.., past the committed count;
    `labels`: their label indices; `id_keys`: the `id_key` of each batch row."""
    rows = slice(None) if sel is None else sel  # a slice takes no copy of the batch's arrays
    count = len(labels)
    phash, has_phash = batch_phash(b)
    for k in ROW_FIELDS:
        _append_rows(f[k], n, b[k][rows].tolist())
    for c in meta_columns:  # every column grows with the rows: "" where the batch lacks it
        values = meta[rows, meta_names.index(c)].tolist() if c in meta_names else [""] * count
        _append_rows(f[meta_dataset(c)], n, values)
    _append_rows(f[KEYS], n, np.stack([id_keys[rows], key_array(b["sha256"][rows].tolist())], axis=1))
    _append_rows(f["label"], n, np.array(labels, dtype=np.int32))
    _append_rows(f["orig_size"], n, b["size"][rows])
    _append_rows(f["features"], n, b["features"][rows])
    if PHASH in f:  # NO_FINGERPRINT (0) where a row has none
        _append_rows(_phash_at(f, n), n, np.where(has_phash[rows], phash[rows], np.uint64(0)).astype(np.uint64))


def _write_failed(f, failed: dict[str, tuple[str, str]]) -> None:
    """The failed-image table (path, reason, sha256) rewritten whole from `failed`."""
    for name, col in (("path", list(failed)), ("reason", [v[0] for v in failed.values()]),
                      ("sha256", [v[1] for v in failed.values()])):
        ds = f[f"failed/{name}"]
        ds.resize(len(col), axis=0)
        if col:
            ds[:] = col


def _add_meta_column(f, column: str, n: int) -> None:
    """A new metadata column meta/<column>, resizable like every per-row string dataset, "" for the n rows it
    did not know (a leftover of the same name, from no committed state, is replaced)."""
    group = f.require_group(META)
    if column in group:
        del group[column]
    ds = group.create_dataset(column, (n,), maxshape=(None,), dtype=STRING_DTYPE, chunks=(4096,))
    block = 1 << 16
    for start in range(0, n, block):  # written, not left to HDF5's fill value, in bounded blocks
        stop = min(n, start + block)
        ds[start:stop] = [""] * (stop - start)


def add_phash_column(f, n: int) -> None:
    """The (N,) uint64 fingerprint column, NO_FINGERPRINT (0, HDF5's fill value) for the n rows it did not know
    (a leftover of a commit that never finished is replaced)."""
    if PHASH in f:
        del f[PHASH]
    f.create_dataset(PHASH, (n,), maxshape=(None,), dtype=np.uint64, chunks=(8192,), fillvalue=0)


def _phash_at(f, rows: int):
    """The fingerprint column, at least `rows` long (a version without fingerprints may have added rows since)."""
    ds = f[PHASH]
    if ds.shape[0] < rows:
        ds.resize(rows, axis=0)  # HDF5 reads the new rows as the fill value, NO_FINGERPRINT
    return ds


def _append_rows(ds, n: int, values) -> None:
    """Write `values` as rows n.. of `ds`, growing it if needed (a dataset may be longer than the committed
    count: rows past it are from a commit that never finished, and are overwritten)."""
    if ds.shape[0] < n + len(values):
        ds.resize(n + len(values), axis=0)
    ds[n:n + len(values)] = values


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
