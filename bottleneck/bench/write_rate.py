"""The `writer` part: one `CacheWriter` writing N rows of D-d float16 features in batches (journal, commits, the
last commit on leaving), against plain h5py writing the same array in one call, in the same run: the features
alone, and the rows as a cache holds them (features and every per-row column, one call each, then an fsync: what
the writer's end makes as durable).

The files go to a temporary folder on the file system of the cache folder (`cache/` when it exists, else the
current folder): a RAM disk would make every fsync free and the figure meaningless. Each way is timed `repeats`
times, alternating, after a round that warms both up and is not timed; the medians are reported, and the writer's
time against the same rows in plain h5py as the median of each run against the one right after it."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from ..cache import ROW_FIELDS, CacheConfig, CacheWriter
from ..errors import InputError
from .data import BenchOptions, synthetic_rows

CLASSES = tuple(f"c{i}" for i in range(7))  # the labels of `synthetic_rows`


def file_system(folder: Path) -> str:
    """The type and device of the mount holding `folder` (from /proc/mounts), e.g. "ext4 /dev/vda"; "" if unknown."""
    folder = folder.resolve()
    best, found = -1, ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = Path(fields[1])
        if (folder == mount or mount in folder.parents) and len(mount.parts) > best:
            best, found = len(mount.parts), f"{fields[2]} {fields[0]}"
    return found


def _write_cache(path: Path, rows: list[dict], x: np.ndarray, batch: int) -> float:
    config = CacheConfig(backbone="bench", weights="none", weights_sha256="", seed=0, input_size=1, pooling="avg",
                         preprocessing="none", dtype="float16", num_features=x.shape[1])
    start = time.perf_counter()
    with CacheWriter(path, config, {"dataset": "bench"}, CLASSES) as w:
        for s in range(0, len(rows), batch):
            w.write_batch(rows[s:s + batch], x[s:s + batch])
    return time.perf_counter() - start


def _write_h5py(path: Path, x: np.ndarray, rows: list[dict] | None = None) -> tuple[float, float]:
    """(seconds to write `x` in one call and close, seconds of an fsync of the file after). With `rows`, the rows'
    columns too, as a cache holds them (each string column, the label index, the original size), one call each."""
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x)
        if rows is not None:
            for name in ROW_FIELDS:  # a cache's per-row strings, stored as UTF-8
                f.create_dataset(name, data=np.array([r[name] for r in rows], dtype=object),
                                 dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("label", data=np.array([CLASSES.index(r["label"]) for r in rows], np.int32))
            f.create_dataset("orig_size", data=np.array([(r["width"], r["height"]) for r in rows], np.int32))
    written = time.perf_counter() - start
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return written, time.perf_counter() - start - written


def bench_writer(opts: BenchOptions, folder: Path | None = None) -> dict:
    """Rows/s of one CacheWriter (batches of `opts.batch_size`) and of plain h5py, `opts.writer_rows` rows of
    `opts.dim`-d float16, in a temporary folder under `folder` (default: `cache/` if it exists, else here)."""
    n, dim, batch = opts.writer_rows, opts.dim, opts.batch_size
    rows, _ = synthetic_rows(0, n, dim)
    x = np.random.default_rng(opts.seed).random((n, dim), dtype=np.float32).astype(np.float16)
    parent = folder or (Path("cache") if Path("cache").is_dir() else Path("."))
    writer_s, h5py_s, fsync_s, rows_s = [], [], [], []
    try:
        folder_cm = tempfile.TemporaryDirectory(dir=parent, prefix=".bench-writer-")
    except OSError as exc:
        raise InputError(f"the writer part times files on the cache's file system, in {parent.resolve()}, which "
                         f"cannot be written ({exc.strerror or exc}); run bench from a folder you can write "
                         "to") from None
    with folder_cm as tmp:
        for k in range(max(1, opts.repeats) + 1):  # round 0 warms both ways up (first allocations) and is not timed
            writer_s.append(_write_cache(Path(tmp) / f"writer{k}.h5", rows, x, batch))
            written, synced = _write_h5py(Path(tmp) / f"h5py{k}.h5", x)
            h5py_s.append(written)
            fsync_s.append(synced)
            rows_s.append(sum(_write_h5py(Path(tmp) / f"rows{k}.h5", x, rows)))
            for f in Path(tmp).iterdir():  # a fresh file each time, and little disk held
                f.unlink()
        fs = file_system(Path(tmp))
    writer_s, h5py_s, fsync_s, rows_s = writer_s[1:], h5py_s[1:], fsync_s[1:], rows_s[1:]
    w, h, f, r = (float(np.median(v)) for v in (writer_s, h5py_s, fsync_s, rows_s))
    per_run = [a / b for a, b in zip(writer_s, rows_s)]  # each writer against the plain h5py run right after it
    return {"rows": n, "dim": dim, "batch": batch, "repeats": len(writer_s), "file_system": fs,
            "writer_s": w, "h5py_s": h, "h5py_fsync_s": f, "writer_rows_per_s": n / w, "h5py_rows_per_s": n / h,
            "h5py_synced_rows_per_s": n / (h + f), "writer_runs_rows_per_s": [n / s for s in writer_s],
            "slowdown": w / h, "h5py_rows_s": r, "h5py_rows_rows_per_s": n / r,
            "slowdown_rows": float(np.median(per_run)), "slowdown_rows_runs": per_run}


def format_writer(r: dict) -> list[str]:
    return [f"writer: one CacheWriter, {r['rows']} rows x {r['dim']} float16 in batches of {r['batch']}: "
            f"{r['writer_rows_per_s']:,.0f} rows/s (median of {r['repeats']}: "
            f"{', '.join(f'{v:,.0f}' for v in r['writer_runs_rows_per_s'])}) vs plain h5py in one call "
            f"{r['h5py_rows_per_s']:,.0f} rows/s ({r['h5py_synced_rows_per_s']:,.0f} with an fsync after) = "
            f"{r['slowdown']:.2f}x h5py's time; on {r['file_system'] or 'an unknown file system'}",
            f"  the same rows as a cache holds them (features, image_id, path, group, sha256, label, size), plain h5py "
            f"in one call per column and an fsync after, as durable as the writer's end: "
            f"{r['h5py_rows_rows_per_s']:,.0f} rows/s = the writer takes {r['slowdown_rows']:.2f}x its time (median of "
            f"each run against the one right after it: {' / '.join(f'{v:.2f}' for v in r['slowdown_rows_runs'])})"]
