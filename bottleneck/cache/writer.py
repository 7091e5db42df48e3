"""Writing a cache safely: one locked writer, journaled batches, commits in place that a crash cannot tear.

    write_batch -> journal (`<cache>.journal/`: CRC-framed records appended to a segment, synced once a second)
    commit (every `commit_seconds`, and at the end) -> the new rows appended in place under an undo journal
    (`undo.py`), then the committed row count (`n_rows`) advanced -> journal emptied

A commit costs its own rows, never a copy of the cache, so a growing cache is readable between commits
(`info` and `train-head` see the committed rows) and a killed run leaves every committed row plus the journaled
batches, which the next writer commits first. The very first commit builds the file beside the target and
renames it into place, so a cache file exists only once it is whole.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError, CacheLockedError, CacheMismatchError
from .batch import DamagedBatch
from .commit import CommittedState, apply_batches, create_layout, drop_tracebacks, interrupts_deferred, merged
from .journal import Batch, Journal, first_line, os_reason, pending_batches
from .pending import lock_path
from .row_keys import key_array, matching_rows, read_keys, read_rows
from .store import (
    PHASH,
    CacheConfig,
    open_cache,
    read_attrs,
    recorded_config,
)
from .undo import (
    USERBLOCK,
    CacheReadersError,
    FdFile,
    UndoFile,
    fsync_dir,
    lock_exclusive,
    rollback,
    stamp_file_id,
    undo_path,
)

COMMIT_SECONDS = 10.0  # how often a running extraction makes its journaled batches readable
READERS_WAIT = (0.5, 60.0)  # seconds a commit waits for readers to close the cache: periodic, final
COMMIT_MARGIN = 1 << 20  # bytes a commit needs beyond its batches' own: metadata, the undo journal's pages


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `folder`."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


class WriterLock:
    """`<cache>.lock`: one writer per cache. The kernel drops a flock when its holder dies, so a SIGKILLed
    writer never leaves a stale lock; the file holds the pid, for the message the next writer sees."""

    def __init__(self, path: Path):
        self.path = path
        self.lock_path = lock_path(path)
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CacheLockedError(f"cache {self.path} is being written by another process (pid {holder}); "
                                   "wait for it to finish or pass another --cache") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class CommitFailed(CacheError):
    """A commit that was rolled back; `cause` is what failed (an OSError: the file system; else a batch's
    content), `reason` its one line."""

    def __init__(self, message: str, cause: BaseException, reason: str):
        super().__init__(message)
        self.cause = cause
        self.reason = reason


class CacheWriter:
    """One writer of one cache: holds the lock, checks the configuration, journals batches, commits them.

    Use as a context manager: entering commits what an interrupted run journaled, `write_batch` commits every
    `commit_seconds`, leaving commits the rest (also on Ctrl-C or an error)."""

    def __init__(self, path: str | Path, config: CacheConfig, info: dict | None = None,
                 class_names: tuple[str, ...] = (), commit_seconds: float = COMMIT_SECONDS):
        self.path = Path(path)
        self.config = config
        self.info = dict(info or {})
        self.class_names = tuple(class_names)  # the index's classes, sorted: the order of a new cache
        self.commit_seconds = commit_seconds
        self.lock = WriterLock(self.path)
        self.journal = Journal(self.path, config)
        self._state: CommittedState | None = None
        self._last_commit = time.monotonic()

    def __enter__(self) -> CacheWriter:
        if self.path.exists() and read_attrs(self.path).get("virtual"):  # its rows live in the shards' files
            raise CacheError(f"cache {self.path} is a virtual merge of shards; extract into a shard, or merge by "
                             "copying")
        self.check_config()  # before anything is created, so a mismatch leaves no trace
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self.check_config()  # again under the lock: another writer may have created it meanwhile
            self.journal = Journal(self.path, self.config)  # numbering continues after batches left behind
            self.journal.remove_stale()  # parts of files a killed run was writing
            self.journal.clear([])  # a run killed while emptying the journal left its config.json
            self.commit(READERS_WAIT[1])  # batches journaled by an interrupted run come first
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.commit(READERS_WAIT[1])  # keep whatever finished, also on Ctrl-C or an error
        except CacheReadersError as err:
            if exc is None:
                raise CacheReadersError(f"{err}; its {len(pending_batches(self.path))} finished batches stay "
                                        "journaled and are committed by the next run of the same extract "
                                        "command, once the reader has closed it") from None
        except CacheError:
            if exc is None:
                raise
            # the error (or Ctrl-C) that ended the run is the one to report; the batches stay journaled
        finally:
            try:
                self.journal.close_segment()  # what stays journaled is on the disk before the lock is released
            except OSError:
                pass  # the kernel still holds the batches: only a power cut before it writes them loses them
            finally:
                self.lock.release()

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
    def lookup(self, image_ids, shas) -> tuple[dict[str, dict], dict[str, int]]:
        """Which of these images the cache holds: image id -> {sha256, label, group, path, row, views, meta, phash
        (0 when the row has no fingerprint)}, and
        sha256 -> row for the same bytes under any id. Reads the row keys and only the rows they point to."""
        if not self.path.exists():
            return {}, {}
        image_ids, shas = [str(i) for i in image_ids], [str(s) for s in shas]
        with open_cache(self.path) as f:
            state = CommittedState.read(f)  # what the first commit needs, from the same open file
            n, classes, views = state.n, list(state.classes), int(f.attrs.get("views", 0))
            keys = read_keys(f, n)
            id_keys, sha_keys = key_array(image_ids).tolist(), key_array(shas).tolist()
            by_id, by_sha = matching_rows(keys[:, 0], id_keys), matching_rows(keys[:, 1], sha_keys)
            rows = np.unique(np.array([r for hits in (by_id, by_sha) for rs in hits.values() for r in rs], np.int64))
            stored = read_rows(f, rows, n)
        at = {int(r): k for k, r in enumerate(rows)}
        found, same_bytes = {}, {}
        for image_id, key in zip(image_ids, id_keys):
            for r in by_id.get(key, ()):
                k = at[r]
                if stored["image_id"][k] == image_id:
                    label = int(stored["label"][k])
                    found[image_id] = {"sha256": stored["sha256"][k], "label": classes[label] if label >= 0 else None,
                                       "group": stored["group"][k], "path": stored["path"][k], "row": r,
                                       "views": views if stored["views_ok"][k] else 0,
                                       "meta": {c: col[k] for c, col in stored["meta"].items()},
                                       "phash": int(stored["phash"][k])}
                    break
        for sha, key in zip(shas, sha_keys):
            for r in by_sha.get(key, ()):
                if stored["sha256"][at[r]] == sha:
                    same_bytes[sha] = r
                    break
        # The first commit need not read the keys again, nor look up the ids resolved here.
        state.id_keys, state.known, state.absent = keys[:, 0], {i: v["row"] for i, v in found.items()}, \
            set(image_ids) - set(found)
        self._state = state
        return found, same_bytes

    def existing_views(self) -> int:
        return int(read_attrs(self.path).get("views", 0)) if self.path.exists() else 0

    def cached_features(self, row: int) -> np.ndarray:
        with open_cache(self.path) as f:
            return f["features"][row]

    def cached_phash(self, row: int) -> int:
        """The fingerprint of a committed row; 0 (NO_FINGERPRINT) when it has none."""
        with open_cache(self.path) as f:
            return int(f[PHASH][row]) if PHASH in f and f[PHASH].shape[0] > row else 0

    # -- writing --------------------------------------------------------------------------------
    def write_batch(self, rows: list[dict], features: np.ndarray | None, failed: list[tuple[str, str, str]] = (),
                    views: np.ndarray | None = None, view_lo: int = 0):
        """Journal one batch durably; commit it when it is the cache's first or `commit_seconds` have passed.

        rows: dicts with image_id, path, label (name|None), group, sha256, width, height, has_features and
        optionally meta ({column: text}: the row's metadata columns; a cached row keeps the columns not given);
        features: (len(rows), D) aligned with rows (ignored where has_features is False); failed: (path,
        reason, sha256); views: (len(rows), V, D) of which views view_lo..V (1-based) are new, or None."""
        self.journal.write(rows, features, failed, views, view_lo)
        # The first batch is committed at once: a first run is readable (and survives a kill) from then on.
        if self.lock.fd is None:
            return  # not entered (no lock): journal only, as an interrupted run would have left it
        first = self._state is None and not self.path.exists()  # no stat a batch once the cache is known to exist
        if first or time.monotonic() - self._last_commit >= self.commit_seconds:
            try:
                self.commit(READERS_WAIT[0])
            except CacheReadersError:
                self._last_commit = time.monotonic()  # a reader holds the file: keep journaling, retry later

    def commit(self, readers_wait: float = READERS_WAIT[1]) -> int:
        """Apply the journaled batches to the cache; returns the rows added."""
        batches = self._checked(pending_batches(self.path))
        if not batches:
            if self.journal.done:  # only damaged batches: kept in damaged/, their segments go
                self.journal.clear([])
            return 0
        self._check_space(batches)
        with interrupts_deferred():  # Ctrl-C lands after the commit, which takes well under a second
            try:
                added = self._apply(batches, readers_wait)
                self.journal.clear(batches)
            except CommitFailed as err:
                if isinstance(err.cause, OSError):  # the file system's fault, not a batch's: they stay journaled
                    raise
                added = self._one_by_one(batches, readers_wait)
        self._last_commit = time.monotonic()
        return added

    def _apply(self, batches: list[Batch], readers_wait: float) -> int:
        return self._append(batches, readers_wait) if self.path.exists() else self._create(batches)

    def _one_by_one(self, batches: list[Batch], readers_wait: float) -> int:
        """After a commit failed on the batches' content (not the file system): each batch alone; one that still
        cannot be committed is moved aside as damaged (its images are extracted again), so that no input can wedge
        the cache."""
        added = 0
        for batch in batches:
            try:
                added += self._apply([batch], readers_wait)
            except CommitFailed as err:
                if isinstance(err.cause, OSError):
                    raise
                self.journal.set_aside(batch, f"it cannot be committed: {err.reason}")
                continue
            self.journal.clear([batch])
        return added

    def _checked(self, batches: list[Batch]) -> list[Batch]:
        """The batches that can be applied; each damaged one is moved aside with a warning (its images are
        extracted again), so that no batch can wedge the cache."""
        ok = []
        for batch in batches:
            try:
                self.journal.load(batch)
                ok.append(batch)
            except DamagedBatch as err:
                self.journal.set_aside(batch, str(err))
        return ok

    def _read(self, batches: list[Batch]):
        """The arrays of journaled batches, in order (kept by the journal since they were written or checked, else
        read again), joined where that applies the same (`commit.merged`): a commit of many small batches writes each
        dataset a few times."""
        return merged(self.journal.arrays(b) for b in batches)

    def _check_space(self, batches: list[Batch]) -> None:
        """Refuse before writing a byte when the file system has less room than the commit needs (its rows are
        about as large in the cache as in the journal)."""
        needed = sum(b.size for b in batches) + COMMIT_MARGIN
        free = free_bytes(self.path.parent)
        if needed > free:
            raise CacheError(f"cannot commit to cache {self.path}: it needs about {_size(needed)} and "
                             f"{self.path.parent} has {_size(free)} free; the committed rows are intact and the "
                             f"{len(batches)} finished batches stay journaled: free space and rerun the same command")

    def _append(self, batches: list[Batch], readers_wait: float) -> int:
        fd = os.open(self.path, os.O_RDWR)
        try:
            lock_exclusive(fd, self.path, readers_wait)  # readers wait (open_cache) until the commit ends
            if rollback(self.path, fd):  # a commit killed midway is undone before this one starts
                self._state = None
            undo = UndoFile(fd, self.path)
            echoes = sys.unraisablehook, sys.excepthook  # h5py prints a failed write once per open object
            sys.unraisablehook, sys.excepthook = (lambda *_: None), (lambda *_: None)
            try:
                with h5py.File(undo, "r+") as f:
                    if self._state is None:
                        self._state = CommittedState.read(f)
                    added = apply_batches(f, self._read(batches), self.info, self.class_names, self._state)
                if undo.error is not None:  # a write failed: HDF5 went on (see FdFile), the commit is void
                    raise undo.error
            except BaseException as exc:
                self._state = None  # half-applied: read it again from the restored file next time
                drop_tracebacks(exc)  # their frames hold h5py objects: let them close while writes are undone
                gc.collect()
                undo.abandon()
                if isinstance(exc, Exception):
                    raise self._failed(undo.error or exc) from None
                raise
            finally:
                sys.unraisablehook, sys.excepthook = echoes
            undo.finish()
            return added
        finally:
            os.close(fd)  # releases the commit lock

    def _create(self, batches: list[Batch]) -> int:
        """The first commit: build the file beside the target, then rename it into place whole."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        undo_path(self.path).unlink(missing_ok=True)  # an undo of a file deleted since: never for this new one
        fd = out = None
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            out = FdFile(fd, tmp)  # write errors are kept, not raised into HDF5 (see FdFile)
            state, added = self._build(out, batches)
            if out.error is not None:
                raise out.error
            out.closed = True
            stamp_file_id(fd)
            out.sync()
        except Exception as exc:  # noqa: BLE001 -- any failure: the new file is removed, the error re-raised
            if out is not None:
                out.settle()
            drop_tracebacks(exc)
            gc.collect()  # h5py objects held by the traceback close now, while writes are still discarded
            tmp.unlink(missing_ok=True)
            raise self._failed(exc) from None
        finally:
            if fd is not None:
                os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.path)
        self._state = state
        return added

    def _failed(self, exc: BaseException) -> CommitFailed:
        reason = os_reason(exc) if isinstance(exc, OSError) else first_line(exc) or type(exc).__name__
        space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = ("free space and rerun the same command" if space else
               "rerun the same command once that is fixed")
        return CommitFailed(f"cannot commit to cache {self.path}: {reason}; nothing was lost (the cache is as it "
                            f"was and the finished batches stay journaled): {fix}", exc, reason)

    def _build(self, out: FdFile, batches: list[Batch]) -> tuple[CommittedState, int]:
        with h5py.File(out, "w", userblock_size=USERBLOCK) as f:  # the user block keeps the file's id (undo.py)
            create_layout(f, self.config)
            state = CommittedState(0, [], {}, np.zeros(0, np.uint64))
            added = apply_batches(f, self._read(batches), self.info, self.class_names, state)
        return state, added
