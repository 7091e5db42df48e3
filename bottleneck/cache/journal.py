"""The batch journal of a cache (`<cache>.journal/`): the redo log between a batch and its commit.

Finished batches are appended as framed records (`frames.py`: header, CRC-32, arrays) to one segment file,
`journal-N.bnj` (N: the number of its first batch); a writer starts a new segment after each commit. Nothing is
synced batch by batch: the segment is fsynced at most every `SYNC_SECONDS` and when its writer ends, so a killed
process loses nothing it journaled (the kernel still holds it) and a power cut at most the batches of the last
`SYNC_SECONDS`, whose records are then cut off or fail their CRC. A record a kill or a full disk cut off can only
be a segment's last; readers ignore it and the next writer truncates it. A commit checks every batch before
applying it (`check_batch`): one that does not load, fails its CRC, or whose arrays are not what a batch holds, is
copied to `damaged/` with a warning, and its images, absent from the cache, are simply extracted again. A commit
then deletes the segments it applied. Batches are keyed by image id, so applying one twice (a crash between the
commit and the cleanup) adds nothing twice. Batches journaled one file each by older versions (`batch-N.npz`) are
read and committed as before.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import BottleneckWarning, CacheError
from .frames import DamagedRecord, pack, read_record, scan, write_all

ROW_FIELDS = ("image_id", "path", "group", "sha256")  # string columns, one per row
SEGMENT_NAME = re.compile(r"journal-(\d+)\.bnj")
LEGACY_NAME = re.compile(r"batch-(\d+)\.npz")  # one batch per file, journaled by a version before the segments
STALE = (".batch-*.npz.part", "batch-*.npz.tmp", ".config.json.part", "config.json.tmp")  # cut off mid-write
KEEP_RECENT = 256 << 20  # bytes of batches a writer keeps in memory for the commit that applies them
SYNC_SECONDS = 1.0  # batches reach the disk in groups at most this far apart: the power-loss window
CRASH_ENV = "BOTTLENECK_CRASH_AT_JOURNAL"  # crash harness: SIGKILL self at the Nth journal step (tests)
# What a batch holds: name -> (dimensions, dtype kind); "D" stands for the cache's dtype. `meta_names` (C,) names
# the metadata columns (`extract --meta-columns`) and `meta` (n, C) holds each row's values.
ARRAYS = {**{k: (1, "U") for k in (*ROW_FIELDS, "label")}, "has_label": (1, "b"), "has_features": (1, "b"),
          "size": (2, "i"), "features": (2, "D"), "failed": (2, "U"), "view_lo": (0, "i"), "views": (3, "D"),
          "meta_names": (1, "U"), "meta": (2, "U"), "phash": (1, "u"), "has_phash": (1, "b")}
META_ARRAYS = ("meta_names", "meta")  # absent from batches journaled by versions that stored no metadata columns
PHASH_ARRAYS = ("phash", "has_phash")  # each row's perceptual fingerprint, absent from batches of older versions
NOT_PER_ROW = ("failed", "meta_names")  # arrays whose first dimension is not the batch's rows


@dataclass(frozen=True)
class Batch:
    """One journaled batch: the record at `offset` (`size` bytes) of a segment, or a whole legacy `.npz` file."""

    path: Path
    offset: int
    size: int
    seq: int

    @property
    def name(self) -> str:
        return self.path.name if self.path.suffix == ".npz" else f"{self.path.name}@{self.offset}"


def journal_dir(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def segments(path: Path) -> list[Path]:
    """The journal's segment files and legacy batch files, in order. Safe while a writer runs: a commit that
    empties the journal removes its folder, which may vanish between the check and the listing."""
    try:
        found = [p for p in journal_dir(path).iterdir() if file_seq(p) is not None]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda p: (file_seq(p), p.name))


def file_seq(p: Path) -> int | None:
    """The number of the first batch of a journal file (a segment or a legacy batch), None for another file."""
    m = SEGMENT_NAME.fullmatch(p.name) or LEGACY_NAME.fullmatch(p.name)
    return int(m.group(1)) if m else None


def pending_batches(path: Path) -> list[Batch]:
    """The journaled batches of `path`, in order; a record still being written (or cut off) is not one."""
    out = []
    for f in segments(path):
        try:
            if f.suffix == ".npz":
                out.append(Batch(f, 0, f.stat().st_size, file_seq(f)))
                continue
            records, _ = scan(f)
        except FileNotFoundError:  # committed and removed meanwhile
            continue
        out.extend(Batch(f, off, size, file_seq(f) + k) for k, (off, size) in enumerate(records))
    return out


def row_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """A batch's per-row arrays (and `meta_names`) from its row dicts (see CacheWriter.write_batch), in one pass
    over the rows."""
    n = len(rows)
    cols = list(zip(*[(r["image_id"], r["path"], r["group"], r["sha256"], r["label"], r["width"], r["height"],
                       r.get("has_features", True), r.get("phash"), r.get("meta")) for r in rows])) or [()] * 10
    ids, paths, groups, shas, labels, widths, heights, has_features, phash, meta = cols
    names = list(dict.fromkeys(c for m in meta if m for c in m)) if any(meta) else []
    text = {k: np.array([v or "" for v in col], dtype=str).reshape(n)
            for k, col in zip(ROW_FIELDS, (ids, paths, groups, shas))}
    return {**text,
            "meta_names": np.array(names, dtype=str).reshape(len(names)),
            "meta": np.array([[(m or {}).get(c, "") for c in names] for m in meta], dtype=str).reshape(n, len(names)),
            "label": np.array([v if v is not None else "" for v in labels], dtype=str).reshape(n),
            "has_label": np.array([v is not None for v in labels], dtype=bool).reshape(n),
            "size": np.array([widths, heights], dtype=np.int32).reshape(2, n).T.copy(),
            "has_features": np.array(has_features, dtype=bool).reshape(n),
            "phash": np.array([v or 0 for v in phash], dtype=np.uint64).reshape(n),
            "has_phash": np.array([v is not None for v in phash], dtype=bool).reshape(n)}


def storable_text(rows: list[dict], failed=()) -> bool:
    """Whether every string of these rows (ids, paths, groups, digests, labels, metadata names and values) and
    failed images is a str the cache's UTF-8 columns can hold: no NUL, no lone surrogate. What `check_batch` checks of
    a batch's strings, read from the strings themselves before they become arrays (whose strings they are, less any
    trailing NUL); False for anything that is not a str, which `check_batch` then judges."""
    try:
        text = "".join([s for r in rows for s in (r["image_id"], r["path"], r["group"], r["sha256"], r["label"]) if s]
                       + [v for r in rows if r.get("meta") for kv in r["meta"].items() for v in kv]
                       + [s for x in failed for s in x])
    except TypeError:
        return False
    return "\0" not in text and utf8_ok(text)


def batch_meta(arrays: dict) -> tuple[list[str], np.ndarray]:
    """A journaled batch's metadata columns and its (n, C) values; none for a batch of an older version."""
    if "meta_names" not in arrays:
        return [], np.zeros((len(arrays["image_id"]), 0), str)
    return [str(c) for c in arrays["meta_names"]], arrays["meta"]


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


class DamagedBatch(Exception):
    """A journaled batch that cannot be applied; the message says why."""


class Journal:
    """Batches of one cache written in order, by its one writer, and synced in groups."""

    def __init__(self, path: Path, config):
        self.path = path
        self.dir = journal_dir(path)
        self.config = config
        self.seq = max((b.seq for b in pending_batches(path)), default=0)
        self.steps = 0
        self.crash_at = int(os.environ.get(CRASH_ENV, "0") or 0)
        self.segment: Path | None = None  # the segment this writer appends to, and its open descriptor
        self.fd: int | None = None
        self.end = 0  # where its next record starts
        self.unsynced = False
        self.last_sync = time.monotonic()
        self.done: set[tuple[Path, int]] = set()  # records applied or set aside, in segments not yet removed
        self.recent: dict[Batch, dict] = {}  # arrays of batches journaled or checked, not yet committed
        self.recent_bytes = 0
        self.checked: set[Batch] = set()  # batches of `recent` that need no check_batch

    def _step(self) -> None:
        """A point where the crash harness may kill the process: inside and between the journal's writes."""
        self.steps += 1
        if self.crash_at and self.steps == self.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    # -- writing --------------------------------------------------------------------------------------
    def write(self, rows: list[dict], features: np.ndarray | None, failed=(), views: np.ndarray | None = None,
              view_lo: int = 0) -> Batch:
        """Journal one batch (see CacheWriter.write_batch for the arguments); returns it."""
        d, dtype, n = self.config.num_features, self.config.dtype, len(rows)
        payload = row_arrays(rows)
        payload.update(
            features=(np.zeros((n, d), dtype) if features is None  # a copy: kept in `recent`, the caller's may change
                      else np.array(features, dtype=dtype).reshape(n, d)),
            failed=np.array([list(x) for x in failed], dtype=str).reshape(len(failed), 3),
            view_lo=np.array(view_lo if views is not None else 0),
            views=(np.zeros((n, 0, d), dtype) if views is None else np.array(views, dtype=dtype)),
        )
        try:
            batch = self._append(pack(payload))
            # The commit need not read it back, nor check what was built here from strings it can store.
            self._keep(batch, payload, checked=views is None and storable_text(rows, failed))
            if time.monotonic() - self.last_sync >= SYNC_SECONDS:
                self.sync()
        except OSError as exc:
            raise CacheError(f"cannot write batch {self.seq + 1} to the journal {self.dir}: {os_reason(exc)}; the "
                             "cache's committed rows are intact and the batches journaled before this one are kept: "
                             "free space and rerun the same command") from None
        return batch

    def _append(self, parts: list) -> Batch:
        """One record at the end of this writer's segment (a new one after a commit): whole, or cut back off."""
        if self.fd is None:
            if not self.dir.is_dir():
                self.dir.mkdir(parents=True)
                # A first run's configuration lives here until its first commit creates the cache.
                self._write_file(self.dir / "config.json", json.dumps(asdict(self.config), allow_nan=False).encode())
            # A file of that name holds no whole batch (it would be numbered past it): one a failed write emptied
            self.segment = self.dir / f"journal-{self.seq + 1:08d}.bnj"
            self.fd, self.end = os.open(self.segment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 0
        half = (len(parts) + 1) // 2 if self.crash_at else len(parts)  # the harness kills between two halves
        try:
            size = write_all(self.fd, parts[:half])
            self._step()  # killed here: a record cut off at the segment's end, never read as a batch
            size += write_all(self.fd, parts[half:]) if half < len(parts) else 0
        except BaseException:
            try:
                os.ftruncate(self.fd, self.end)  # the segment ends with whole records again
                os.lseek(self.fd, self.end, os.SEEK_SET)
            except OSError:
                pass  # the next writer cuts it off (remove_stale)
            raise
        batch = Batch(self.segment, self.end, size, self.seq + 1)
        self.end += size
        self.seq += 1
        self.unsynced = True
        self._step()  # killed here: journaled, not committed
        return batch

    def _write_file(self, target: Path, data: bytes) -> None:
        """`target` whole or not at all: written under a name no reader takes for it, fsynced, renamed."""
        part = target.with_name(f".{target.name}.part")
        try:
            with open(part, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(part, target)
        except BaseException:
            try:
                part.unlink(missing_ok=True)
            except OSError:
                pass  # the next writer removes it
            raise

    def sync(self) -> None:
        """Put what this writer journaled on the disk: its segment, and its folder's entry for it."""
        self.last_sync = time.monotonic()
        if self.fd is None or not self.unsynced:
            return
        os.fsync(self.fd)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.unsynced = False

    def close_segment(self, sync: bool = True) -> None:
        """Stop appending to the current segment (synced, unless it is being removed); the next batch starts
        another."""
        if self.fd is not None:
            try:
                if sync:
                    self.sync()
            finally:
                os.close(self.fd)
                self.fd = None

    # -- reading and cleaning ---------------------------------------------------------------------------
    def _keep(self, batch: Batch, arrays: dict, checked: bool = False) -> None:
        """Keep a batch's arrays for the commit that applies it, within KEEP_RECENT bytes in all; `checked`: they
        need no `check_batch` (built by `write` from storable strings, or checked already)."""
        if batch not in self.recent and self.recent_bytes + batch.size <= KEEP_RECENT:
            self.recent[batch] = arrays
            self.recent_bytes += batch.size
        if checked and batch in self.recent:
            self.checked.add(batch)

    def _forget(self, batch: Batch) -> None:
        self.checked.discard(batch)
        if self.recent.pop(batch, None) is not None:
            self.recent_bytes -= batch.size

    def arrays(self, batch: Batch) -> dict:
        """A batch's arrays, unchecked: kept from when this writer journaled it, else read (see `read`)."""
        kept = self.recent.get(batch)
        return kept if kept is not None else self.read(batch)

    @staticmethod
    def read(batch: Batch) -> dict:
        """A batch's arrays, unchecked; DamagedBatch when its record is cut off, foreign or fails its CRC."""
        if batch.path.suffix == ".npz":  # journaled by an older version
            with open(batch.path, "rb") as fh, np.load(fh) as b:  # our handle: np.load leaks its own on a bad zip
                return {k: b[k] for k in b.files}
        try:
            return read_record(batch.path, batch.offset, batch.size)
        except DamagedRecord as err:
            raise DamagedBatch(str(err)) from None

    def load(self, batch: Batch) -> dict:
        """A batch's arrays, checked (`check_batch`); DamagedBatch when it cannot be applied."""
        if batch in self.checked:
            return self.recent[batch]
        try:
            arrays = self.arrays(batch)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise DamagedBatch(f"it does not load: {first_line(exc).split('. ')[0] or type(exc).__name__}") from None
        check_batch(arrays, self.config.num_features, self.config.dtype)
        self._keep(batch, arrays, checked=True)  # applied from memory, not read or checked twice
        return arrays

    def set_aside(self, batch: Batch, reason: str) -> Path:
        """Keep a damaged batch in `damaged/` for a post-mortem (a legacy file moved there, a segment's record
        copied there: the segment goes with its commit) and warn, naming it; it is never read again."""
        self._forget(batch)
        dest_dir = self.dir / "damaged"
        dest_dir.mkdir(exist_ok=True)
        stem = batch.path.stem if batch.path.suffix == ".npz" else f"{batch.path.stem}-{batch.offset}"
        suffix = batch.path.suffix
        dest, k = dest_dir / f"{stem}{suffix}", 1
        while dest.exists():
            dest, k = dest_dir / f"{stem}-{k}{suffix}", k + 1
        if batch.path.suffix == ".npz":
            os.replace(batch.path, dest)
        else:
            with open(batch.path, "rb") as src:
                src.seek(batch.offset)
                dest.write_bytes(src.read(batch.size))
            self.done.add((batch.path, batch.offset))
        warnings.warn(f"journal batch {batch.path if batch.path.suffix == '.npz' else batch.name} is damaged "
                      f"({reason}); kept it as {dest}: its images are not in the cache and the extract command "
                      "extracts them again", BottleneckWarning, stacklevel=2)
        return dest

    def remove_stale(self) -> None:
        """What a killed run was writing (only the lock holder may call this): parts of files, and a record cut
        off at a segment's end; files named like batches but not as the journal names them are set aside."""
        if not self.dir.is_dir():
            return
        for pattern in STALE:
            for p in self.dir.glob(pattern):
                p.unlink(missing_ok=True)
        for p in self.dir.glob("batch-*.npz"):
            if not LEGACY_NAME.fullmatch(p.name):
                self.set_aside(Batch(p, 0, p.stat().st_size, 0), "not a name the journal writes")
        for p in segments(self.path):
            if p.suffix == ".bnj":
                _, end = scan(p)
                if not end:
                    p.unlink()
                elif end < p.stat().st_size:
                    os.truncate(p, end)

    def clear(self, batches: list[Batch]) -> None:
        """Drop applied batches: every file whose batches were all applied or set aside goes; the folder (its
        config.json) goes when no batch is left, unless it keeps damaged batches."""
        self.done.update((b.path, b.offset) for b in batches)
        for b in batches:
            self._forget(b)
        for f in sorted({f for f, _ in self.done}, key=lambda p: (file_seq(p) or 0, p.name)):
            if f.suffix == ".npz" or all((f, off) in self.done for off, _ in scan_or_none(f)):
                if f == self.segment:
                    self.close_segment(sync=False)  # its batches are in the cache, which a commit syncs
                self._step()
                f.unlink(missing_ok=True)
                self.done = {d for d in self.done if d[0] != f}
        if self.dir.is_dir() and not pending_batches(self.path):
            self._step()
            self.remove_stale()
            (self.dir / "config.json").unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass  # damaged/ (or something the user put there) stays


def scan_or_none(f: Path) -> list[tuple[int, int]]:
    """The records of segment `f` (none when it is gone)."""
    try:
        return scan(f)[0]
    except FileNotFoundError:
        return []


def os_reason(exc: OSError) -> str:
    """The one-line reason of an OSError, h5py's included (whose strerror is a multi-line HDF5 report)."""
    if exc.errno:
        return os.strerror(exc.errno)
    return first_line(exc) or type(exc).__name__


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
