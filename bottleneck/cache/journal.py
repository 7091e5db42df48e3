"""The batch journal of a cache (`<cache>.journal/`): the redo log between a batch and its commit.

Each finished batch is one `.npz`, written as `.batch-N.npz.part` (a name the journal never reads as a batch),
fsynced and renamed to `batch-N.npz`, so a batch is journaled whole or not at all; a part left by a killed run is
removed by the next writer. A commit checks every batch before applying it (`check_batch`): one that does not
load, or whose arrays are not what a batch holds, is moved to `damaged/` with a warning, and its images, absent
from the cache, are simply extracted again. A commit then empties the journal. Batches are keyed by image id, so
applying one twice (a crash between the commit and the cleanup) adds nothing twice.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import warnings
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import BottleneckWarning, CacheError

ROW_FIELDS = ("image_id", "path", "group", "sha256")  # string columns, one per row
BATCH_NAME = re.compile(r"batch-(\d+)\.npz")
STALE = (".batch-*.npz.part", "batch-*.npz.tmp", ".config.json.part", "config.json.tmp")  # cut off mid-write
CRASH_ENV = "BOTTLENECK_CRASH_AT_JOURNAL"  # crash harness: SIGKILL self at the Nth journal step (tests)
# What a batch holds: name -> (dimensions, dtype kind); "D" stands for the cache's dtype. `meta_names` (C,) names
# the metadata columns (`extract --meta-columns`) and `meta` (n, C) holds each row's values.
ARRAYS = {**{k: (1, "U") for k in (*ROW_FIELDS, "label")}, "has_label": (1, "b"), "has_features": (1, "b"),
          "size": (2, "i"), "features": (2, "D"), "failed": (2, "U"), "view_lo": (0, "i"), "views": (3, "D"),
          "meta_names": (1, "U"), "meta": (2, "U"), "phash": (1, "u"), "has_phash": (1, "b")}
META_ARRAYS = ("meta_names", "meta")  # absent from batches journaled by versions that stored no metadata columns
PHASH_ARRAYS = ("phash", "has_phash")  # each row's perceptual fingerprint, absent from batches of older versions
NOT_PER_ROW = ("failed", "meta_names")  # arrays whose first dimension is not the batch's rows


def journal_dir(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def pending_batches(path: Path) -> list[Path]:
    """The journaled batches of `path`, in order. Safe while a writer runs: a commit that empties the journal
    removes its folder, which may vanish between the check and the listing (then nothing is pending)."""
    try:
        return sorted(p for p in journal_dir(path).glob("batch-*.npz") if BATCH_NAME.fullmatch(p.name))
    except FileNotFoundError:
        return []


def meta_names(rows: list[dict]) -> list[str]:
    """The metadata columns of a batch's rows (each row's optional `meta` dict), in order of first appearance."""
    return list(dict.fromkeys(c for r in rows for c in (r.get("meta") or {})))


def batch_meta(arrays: dict) -> tuple[list[str], np.ndarray]:
    """A journaled batch's metadata columns and its (n, C) values; none for a batch of an older version."""
    if "meta_names" not in arrays:
        return [], np.zeros((len(arrays["image_id"]), 0), str)
    return [str(c) for c in arrays["meta_names"]], arrays["meta"]


class DamagedBatch(Exception):
    """A journaled batch that cannot be applied; the message says why."""


def utf8_ok(text: str) -> bool:
    """Whether `text` can be stored in the cache's UTF-8 string columns (a non-UTF-8 file name decodes, on
    POSIX, to lone surrogates, which cannot)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def batch_phash(arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """A journaled batch's fingerprints (n,) uint64 and whether each row has one (n,) bool; none for a batch of an
    older version."""
    if "phash" not in arrays:
        n = len(arrays["image_id"])
        return np.zeros(n, np.uint64), np.zeros(n, bool)
    return arrays["phash"].astype(np.uint64), arrays["has_phash"].astype(bool)


def check_batch(arrays: dict, num_features: int, dtype: str) -> None:
    """Raise DamagedBatch unless `arrays` is a whole batch of this cache's configuration: every array, each
    of the expected rank, dtype and row count."""
    optional = [group for group in (META_ARRAYS, PHASH_ARRAYS) if not any(k in arrays for k in group)]
    expected = {k: v for k, v in ARRAYS.items() if not any(k in group for group in optional)}
    if set(arrays) != set(expected):
        raise DamagedBatch(f"arrays {sorted(arrays)} instead of {sorted(expected)}")
    n = len(arrays["image_id"])
    for name, (ndim, kind) in expected.items():
        a = arrays[name]
        want = np.dtype(dtype) if kind == "D" else None
        if a.ndim != ndim or (want is not None and a.dtype != want) or (want is None and a.dtype.kind != kind):
            raise DamagedBatch(f"{name} is {a.dtype} of shape {a.shape}")
        if ndim and name not in NOT_PER_ROW and a.shape[0] != n:
            raise DamagedBatch(f"{name} has {a.shape[0]} rows, image_id {n}")
    if "meta" in arrays and arrays["meta"].shape[1] != len(arrays["meta_names"]):
        raise DamagedBatch(f"meta of shape {arrays['meta'].shape} for {len(arrays['meta_names'])} meta_names")
    if arrays["size"].shape[1] != 2 or arrays["failed"].shape[1] != 3:
        raise DamagedBatch(f"size of shape {arrays['size'].shape}, failed of shape {arrays['failed'].shape}")
    if arrays["features"].shape[1] != num_features or arrays["views"].shape[2] != num_features:
        raise DamagedBatch(f"features of shape {arrays['features'].shape} and views of shape "
                           f"{arrays['views'].shape}, where the cache holds {num_features} features")
    if not 0 <= int(arrays["view_lo"]) <= arrays["views"].shape[1]:
        raise DamagedBatch(f"view_lo {int(arrays['view_lo'])} with {arrays['views'].shape[1]} views")
    for name, (_, kind) in expected.items():
        text = "".join(arrays[name].ravel().tolist()) if kind == "U" else ""
        if not utf8_ok(text):
            raise DamagedBatch(f"{name} holds a name that is not valid UTF-8")
        if "\0" in text:  # HDF5's strings end at a NUL: the commit would fail on every rerun
            raise DamagedBatch(f"{name} holds a NUL character")


class Journal:
    """Batches of one cache written durably, in order, by its one writer."""

    def __init__(self, path: Path, config):
        self.path = path
        self.dir = journal_dir(path)
        self.config = config
        self.seq = max((int(BATCH_NAME.fullmatch(p.name).group(1)) for p in pending_batches(path)), default=0)
        self.steps = 0
        self.crash_at = int(os.environ.get(CRASH_ENV, "0") or 0)

    def _step(self) -> None:
        """A point where the crash harness may kill the process: between the journal's writes and renames."""
        self.steps += 1
        if self.crash_at and self.steps == self.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    # -- writing --------------------------------------------------------------------------------------
    def write(self, rows: list[dict], features: np.ndarray | None, failed=(), views: np.ndarray | None = None,
              view_lo: int = 0) -> Path:
        """Journal one batch (see CacheWriter.write_batch for the arguments); returns its file."""
        d, dtype, n = self.config.num_features, self.config.dtype, len(rows)
        if features is None:
            features = np.zeros((n, d), np.float32)
        payload = {k: np.array([r[k] or "" for r in rows], dtype=str).reshape(n) for k in ROW_FIELDS}
        names = meta_names(rows)
        payload.update(meta_names=np.array(names, dtype=str).reshape(len(names)),
                       meta=np.array([[(r.get("meta") or {}).get(c, "") for c in names] for r in rows],
                                     dtype=str).reshape(n, len(names)))
        payload.update(
            label=np.array([r["label"] if r["label"] is not None else "" for r in rows], dtype=str).reshape(n),
            has_label=np.array([r["label"] is not None for r in rows], dtype=bool).reshape(n),
            size=np.array([[r["width"], r["height"]] for r in rows], dtype=np.int32).reshape(n, 2),
            has_features=np.array([r.get("has_features", True) for r in rows], dtype=bool).reshape(n),
            phash=np.array([r.get("phash") or 0 for r in rows], dtype=np.uint64).reshape(n),
            has_phash=np.array([r.get("phash") is not None for r in rows], dtype=bool).reshape(n),
            features=np.asarray(features, dtype=dtype).reshape(n, d),
            failed=np.array([list(x) for x in failed], dtype=str).reshape(len(failed), 3),
            view_lo=np.array(view_lo if views is not None else 0),
            views=(np.zeros((n, 0, d), dtype) if views is None else np.asarray(views, dtype=dtype)),
        )
        buf = io.BytesIO()
        np.savez(buf, **payload)
        target = self.dir / f"batch-{self.seq + 1:08d}.npz"
        try:
            if not self.dir.is_dir():
                self.dir.mkdir(parents=True)
                # A first run's configuration lives here until its first commit creates the cache.
                self._write_file(self.dir / "config.json", json.dumps(asdict(self.config), allow_nan=False).encode())
            self._write_file(target, buf.getbuffer())
        except OSError as exc:
            raise CacheError(f"cannot write batch {target.name} to the journal {self.dir}: {os_reason(exc)}; the "
                             "cache's committed rows are intact and the batches journaled before this one are kept: "
                             "free space and rerun the same command") from None
        self.seq += 1
        return target

    def _write_file(self, target: Path, data) -> None:
        """`target` whole or not at all: written under a name no reader takes for it, fsynced, renamed."""
        part = target.with_name(f".{target.name}.part")
        view = memoryview(data).cast("B")
        try:
            with open(part, "wb") as fh:
                fh.write(view[: len(view) // 2])
                fh.flush()
                self._step()  # killed here: a partial file under the temporary name
                fh.write(view[len(view) // 2:])
                fh.flush()
                os.fsync(fh.fileno())
            self._step()  # killed here: a whole file under the temporary name
            os.replace(part, target)  # atomic: a batch is either wholly journaled or absent
        except BaseException:
            try:
                part.unlink(missing_ok=True)
            except OSError:
                pass  # the next writer removes it
            raise
        self._step()  # killed here: journaled, not committed

    # -- reading and cleaning ---------------------------------------------------------------------------
    @staticmethod
    def read(batch: Path) -> dict:
        with open(batch, "rb") as fh, np.load(fh) as b:  # our handle: np.load leaks its own on a bad zip
            return {k: b[k] for k in b.files}

    def load(self, batch: Path) -> dict:
        """A batch's arrays, checked (`check_batch`); DamagedBatch when it cannot be applied."""
        try:
            arrays = self.read(batch)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise DamagedBatch(f"it does not load: {first_line(exc).split('. ')[0] or type(exc).__name__}") from None
        check_batch(arrays, self.config.num_features, self.config.dtype)
        return arrays

    def set_aside(self, batch: Path, reason: str) -> Path:
        """Move a damaged batch to `damaged/` (kept for a post-mortem, never read again) and warn, naming it."""
        dest_dir = self.dir / "damaged"
        dest_dir.mkdir(exist_ok=True)
        dest, k = dest_dir / batch.name, 1
        while dest.exists():
            dest, k = dest_dir / f"{batch.stem}-{k}.npz", k + 1
        os.replace(batch, dest)
        warnings.warn(f"journal batch {batch} is damaged ({reason}); moved it to {dest}: its images are not in "
                      "the cache and the extract command extracts them again", BottleneckWarning, stacklevel=2)
        return dest

    def remove_stale(self) -> None:
        """Parts of files cut off mid-write by a killed run (only the lock holder may call this), and files that
        look like batches but are not named as the journal names them."""
        if not self.dir.is_dir():
            return
        for pattern in STALE:
            for p in self.dir.glob(pattern):
                p.unlink(missing_ok=True)
        for p in self.dir.glob("batch-*.npz"):
            if not BATCH_NAME.fullmatch(p.name):
                self.set_aside(p, "not a name the journal writes")

    def clear(self, batches: list[Path]) -> None:
        """Drop applied batches; the folder (its config.json) goes when no batch is left, unless it keeps
        damaged batches."""
        for b in batches:
            self._step()
            b.unlink(missing_ok=True)
        if self.dir.is_dir() and not pending_batches(self.path):
            self._step()
            self.remove_stale()
            (self.dir / "config.json").unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass  # damaged/ (or something the user put there) stays


def os_reason(exc: OSError) -> str:
    """The one-line reason of an OSError, h5py's included (whose strerror is a multi-line HDF5 report)."""
    if exc.errno:
        return os.strerror(exc.errno)
    return first_line(exc) or type(exc).__name__


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
