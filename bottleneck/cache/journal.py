"""The batch journal of a cache (`<cache>.journal/`): the redo log between a batch and its commit.

Finished batches are appended as framed records (`frames.py`: header, CRC-32, arrays) to one segment file,
`journal-N.bnj` (N: the number of its first batch); a writer starts a new segment after each commit. Nothing is
synced batch by batch: the segment is fsynced at most every `SYNC_SECONDS` and when its writer ends, so a killed
process loses nothing it journaled (the kernel still holds it) and a power cut at most the batches of the last
`SYNC_SECONDS`, whose records are then cut off or fail their CRC. A record a kill or a full disk cut off can only
be a segment's last; readers ignore it and the next writer truncates it. A commit checks every batch before
applying it (`batch.check_batch`; a batch this writer built from strings the cache can hold was checked as it was
journaled): one that does not load, fails its CRC, or whose arrays are not what a batch holds, is
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
from .batch import DamagedBatch, check_batch, row_arrays, storable_text
from .frames import DamagedRecord, pack, read_record, scan, write_all

SEGMENT_NAME = re.compile(r"journal-(\d+)\.bnj")
LEGACY_NAME = re.compile(r"batch-(\d+)\.npz")  # one batch per file, journaled by a version before the segments
STALE = (".batch-*.npz.part", "batch-*.npz.tmp", ".config.json.part", "config.json.tmp")  # cut off mid-write
KEEP_RECENT = 256 << 20  # bytes of batches a writer keeps in memory for the commit that applies them
SYNC_SECONDS = 1.0  # batches reach the disk in groups at most this far apart: the power-loss window
CRASH_ENV = "BOTTLENECK_CRASH_AT_JOURNAL"  # crash harness: SIGKILL self at the Nth journal step (tests)
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
