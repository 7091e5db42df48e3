"""In-place HDF5 commits that a crash cannot tear: a rollback journal under h5py's file-object driver.

HDF5 updates its metadata (object headers, chunk B-trees, heaps, the superblock) in place, so a process killed
while h5py flushes can leave a file that no longer opens. Copying the whole file for every commit avoids that but
costs a term that grows with the cache. Instead the committer hands h5py an `UndoFile`: every write below the
size the file had when the commit began first saves the bytes it replaces to `<cache>.undo` (fsynced before the
overwrite). Writes past that size are new space and need no copy. The commit ends by fsyncing the cache and
deleting the undo file; whoever next finds an undo file (a writer, or a reader that finds no live committer)
copies the saved bytes back and truncates the file to its old size: the cache is then byte for byte what it was
before the commit, and the batch journal replays the rest. The cost of a commit is the new rows plus the few
pages of metadata it touches, whatever the size of the cache.

An undo file belongs to one file. A cache is born with a random 16-byte id in its HDF5 user block (the first 512
bytes, which HDF5 never writes), and the undo's header records it, with the file's device and inode and the CRC-32
of sample pages (its first 16, then up to 240 spread over the whole file) as they were when the commit began.
Before applying one, `rollback` compares the id and the inode, and reads each sample page as the rollback would
leave it (its saved bytes, else the file's bytes now): an undo left by a file that was since deleted, replaced or
copied over is set aside as `<cache>.undo.foreign` with one warning, never applied (it would write another file's
pages into this one). A cache written before ids existed has none, and only the inode and the pages speak for it.
What no check can tell apart is a copy of the same cache taken later in the same commit; a copy taken before the
commit is rolled back correctly.

Locks: a commit holds an exclusive `flock` on the cache file, the lock HDF5 itself takes shared for its readers
(`open_cache` in cache.py takes it too, and waits for a commit to finish).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

from ..errors import BottleneckWarning, CacheError

PAGE = 4096
MAGIC = b"BNUNDO02"
MAGIC_V1 = b"BNUNDO01"  # written before undo files named their file: no identity to check
HEADER = struct.Struct("<8sQQQ16sI")  # magic, size of the cache when the commit began, st_dev, st_ino, id, samples
HEADER_V1 = struct.Struct("<8sQ")
SAMPLE = struct.Struct("<QI")  # offset, crc32 of a sample page when the commit began
USERBLOCK = 512  # bytes before the HDF5 superblock that HDF5 never writes: where a cache keeps its id
ID_MAGIC = b"BNCACHE1"
HEAD_PAGES, SPREAD_PAGES = 16, 240  # sample pages: the head (superblock, root group), then spread over the file
RECORD = struct.Struct("<QQI")  # offset, length, crc32 of the saved bytes
CRASH_ENV = "BOTTLENECK_CRASH_AT_WRITE"  # crash harness: SIGKILL self before the Nth write of a commit (tests)
FLUSH_AHEAD = 16 << 20  # bytes a commit writes before they start going to the disk, on a thread, while it goes on


def stamp_file_id(fd: int) -> bytes:
    """Give a cache file, created with `userblock_size=USERBLOCK`, its random id; returns it."""
    file_id = os.urandom(16)
    os.pwrite(fd, ID_MAGIC + file_id, 0)
    return file_id


def read_file_id(fd: int) -> bytes:
    """A cache file's id, or 16 zero bytes for a file without one (written before ids, or not by us)."""
    head = os.pread(fd, len(ID_MAGIC) + 16, 0)
    return head[len(ID_MAGIC):] if head.startswith(ID_MAGIC) and len(head) == len(ID_MAGIC) + 16 else bytes(16)


def undo_path(path: Path) -> Path:
    return path.with_name(path.name + ".undo")


def fsync_dir(path: Path) -> None:
    fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FdFile:
    """A file object over an open descriptor for h5py's fileobj driver (`h5py.File(FdFile(...))`).

    A write error is never raised into HDF5: an exception inside its driver callbacks leaves HDF5 (and h5py) in a
    state that prints a traceback per open object and can crash the process at exit. The first error is kept in
    `error`, every later write is discarded as if done, HDF5 finishes and closes normally, and the caller, who
    checks `error` after the close, puts the file back (UndoFile) or deletes it (a first commit). Once `closed`,
    writes are discarded too: nothing may reach the file after the commit ends (stray h5py objects closing late).

    Every `FLUSH_AHEAD` bytes, what was written starts going to the disk on a thread (`fdatasync`) while HDF5 goes
    on, so the commit's closing `sync` waits for the last part only. Its outcome is the closing sync's: an error of
    the early flush is raised there (the kernel reports a write-back error once per open file)."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path
        self.pos = 0
        self.writes = 0
        self.error: OSError | None = None  # the first write error, for the message
        self.closed = False  # after the commit ends nothing may reach the file (stray h5py objects closing late)
        self.crash_at = int(os.environ.get(CRASH_ENV, "0") or 0)
        self.unflushed = 0  # bytes written since the last early flush began
        self._ahead: threading.Thread | None = None
        self._ahead_error: OSError | None = None

    # -- the file-object protocol h5py's fileobj driver uses ---------------------------------------
    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else os.fstat(self.fd).st_size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        if self.closed:
            return 0
        n = os.preadv(self.fd, [memoryview(buf).cast("B")], self.pos)
        self.pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            return b""
        if size < 0:
            size = max(0, os.fstat(self.fd).st_size - self.pos)
        data = os.pread(self.fd, size, self.pos)
        self.pos += len(data)
        return data

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.closed or self.error is not None:
            self.pos += len(view)
            return len(view)  # discarded, see the class docstring
        self.writes += 1
        if self.crash_at and self.writes >= self.crash_at:
            os.kill(os.getpid(), 9)  # the crash harness: die exactly here, as a power cut or SIGKILL would
        done = 0
        try:
            self._before_overwrite(self.pos, len(view))
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], self.pos + done)
        except OSError as exc:
            self.error = exc
        self.pos += len(view)
        self.unflushed += len(view)
        if self.unflushed >= FLUSH_AHEAD:
            self._flush_ahead()
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.closed or self.error is not None:
            return size
        try:
            self._before_truncate(size)
            os.ftruncate(self.fd, size)
        except OSError as exc:
            self.error = exc
        return size

    def flush(self) -> None:
        pass  # durability is the committer's `sync`, after h5py has closed the file

    def _flush_ahead(self) -> None:
        """Start the bytes written so far towards the disk on a thread (one at a time). Called from inside HDF5's
        write, so nothing may be raised: without a descriptor or a thread to spare, the closing sync does it all."""
        if self._ahead is not None and self._ahead.is_alive():
            return
        self.unflushed = 0
        try:
            fd = os.dup(self.fd)  # its own descriptor: the caller may close `fd` before the thread is joined
        except OSError:
            return

        def flush():
            try:
                os.fdatasync(fd)
            except OSError as exc:
                self._ahead_error = self._ahead_error or exc
            finally:
                os.close(fd)

        self._ahead = threading.Thread(target=flush, name="bottleneck-flush-ahead", daemon=True)
        try:
            self._ahead.start()
        except RuntimeError:  # no thread to spare
            self._ahead = None
            os.close(fd)

    def settle(self) -> None:
        """Wait for an early flush still running."""
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None

    def sync(self) -> None:
        """Every byte written is on the disk (an early flush's error included: it would not be reported twice)."""
        self.settle()
        if self._ahead_error is not None:
            raise self._ahead_error
        os.fsync(self.fd)

    def _before_overwrite(self, offset: int, length: int) -> None:
        pass

    def _before_truncate(self, size: int) -> None:
        pass


class UndoFile(FdFile):
    """A file object for `h5py.File(UndoFile(...), "r+")` that journals the old bytes of every overwrite.

    `fd` is the cache file `path`, open for reading and writing; the rollback journal is created here."""

    def __init__(self, fd: int, path: Path):
        super().__init__(fd, path)
        self.base_size = os.fstat(fd).st_size  # bytes below this existed before the commit
        self.saved: set[int] = set()  # pages whose old bytes are in the undo journal
        self.undo_path = undo_path(path)
        st = os.fstat(fd)
        samples = [SAMPLE.pack(offset, zlib.crc32(os.pread(fd, PAGE, offset))) for offset in _samples(self.base_size)]
        self.undo = open(self.undo_path, "xb")
        self.undo.write(HEADER.pack(MAGIC, self.base_size, st.st_dev, st.st_ino, read_file_id(fd), len(samples))
                        + b"".join(samples))
        self._sync_undo()
        fsync_dir(self.undo_path)

    def _before_overwrite(self, offset: int, length: int) -> None:
        self._save(offset, length)

    def _before_truncate(self, size: int) -> None:
        if size < self.base_size:
            self._save(size, self.base_size - size)

    # -- the journal -------------------------------------------------------------------------------------
    def _save(self, offset: int, length: int) -> None:
        """Journal the old bytes of the pages of [offset, offset + length) that existed before the commit."""
        end = min(offset + length, self.base_size)
        if offset >= end:
            return
        pages = [p for p in range(offset // PAGE, (end - 1) // PAGE + 1) if p not in self.saved]
        if not pages:
            return
        for first, last in _runs(pages):
            start = first * PAGE
            old = os.pread(self.fd, min((last + 1) * PAGE, self.base_size) - start, start)
            self.undo.write(RECORD.pack(start, len(old), zlib.crc32(old)))
            self.undo.write(old)
        self._sync_undo()  # the old bytes are durable before the first byte of them is replaced
        self.saved.update(pages)

    def _sync_undo(self) -> None:
        self.undo.flush()
        os.fsync(self.undo.fileno())

    def finish(self) -> None:
        """The commit point: the cache's new bytes are durable, then the rollback journal goes."""
        self.closed = True
        self.sync()
        self.undo.close()
        self.undo_path.unlink()
        fsync_dir(self.undo_path)

    def abandon(self) -> None:
        """After an error inside the commit: put the old bytes back now."""
        self.closed = True
        self.settle()
        try:
            self.undo.close()
        except OSError:
            pass  # the failed write was the journal's own; its torn record is ignored by the rollback
        rollback(self.path, self.fd)


def _runs(pages: list[int]):
    """Sorted page numbers -> (first, last) of each consecutive run."""
    first = prev = pages[0]
    for p in pages[1:]:
        if p != prev + 1:
            yield first, prev
            first = p
        prev = p
    yield first, prev


def rollback(path: Path, fd: int) -> bool:
    """Undo the unfinished commit of `path` (open read/write as `fd`), if its undo journal exists and was made for
    this file; True when something was rolled back. An undo made for another file is set aside (see the module's
    docstring).

    The caller holds the cache's exclusive lock (or knows no committer is alive). Safe to repeat: a rollback
    killed halfway is simply done again."""
    undo = undo_path(path)
    if not undo.exists():
        return False
    folder = undo.parent if str(undo.parent) else Path(".")
    if not os.access(folder, os.W_OK):  # it could be applied but never removed: every reader would apply it again
        raise CacheError(f"cache {path} has an unfinished commit to roll back ({undo.name}) and this user cannot "
                         f"write to its folder {folder.resolve()}: give this user write access to that folder, or "
                         "run any bottleneck command on the cache as a user who has it")
    raw = undo.read_bytes()
    if len(raw) < HEADER_V1.size:  # the commit died before it wrote anything to the cache
        undo.unlink()
        return False
    magic = raw[:8]
    if magic == MAGIC and (len(raw) < HEADER.size or len(raw) < HEADER.size + SAMPLE.size * HEADER.unpack_from(raw)[5]):
        # killed while writing the header: the cache was not touched
        undo.unlink()
        return False
    if magic not in (MAGIC, MAGIC_V1):
        set_aside(undo, path, "it is not a bottleneck undo journal")
        return False
    base_size = HEADER_V1.unpack_from(raw)[1]
    header = HEADER.unpack_from(raw) if magic == MAGIC else ()
    start = HEADER.size + SAMPLE.size * header[5] if header else HEADER_V1.size
    records = list(_records(raw, start))
    if header:
        samples = [SAMPLE.unpack_from(raw, HEADER.size + k * SAMPLE.size) for k in range(header[5])]
        foreign = _not_for(path, fd, header, samples, records)
        if foreign:
            set_aside(undo, path, foreign)
            return False
    for offset, old in records:
        os.pwrite(fd, old, offset)
    os.ftruncate(fd, base_size)
    os.fsync(fd)
    undo.unlink()
    fsync_dir(undo)
    return True


def _records(raw: bytes, at: int):
    """(offset, saved bytes) of each whole record; a torn last record's overwrite never began (records are synced
    before it)."""
    while at + RECORD.size <= len(raw):
        offset, length, crc = RECORD.unpack_from(raw, at)
        old = raw[at + RECORD.size: at + RECORD.size + length]
        if len(old) < length or zlib.crc32(old) != crc:
            return
        yield offset, old
        at += RECORD.size + length


def _samples(size: int) -> list[int]:
    """Offsets of the sample pages of a file of `size` bytes: its head, then pages spread evenly over the rest."""
    pages = (size + PAGE - 1) // PAGE
    spread = range(HEAD_PAGES, pages, max(1, (pages - HEAD_PAGES) // SPREAD_PAGES))
    return [p * PAGE for p in sorted({*range(min(HEAD_PAGES, pages)), *spread})]


def _not_for(path: Path, fd: int, header: tuple, samples: list[tuple[int, int]],
             records: list[tuple[int, bytes]]) -> str:
    """Why the undo whose header, sample pages and records are given was not made for the file open as `fd` ("" if
    it was): another inode, or a sample page that would not read, after the rollback, as it did when the commit
    began."""
    _, base_size, dev, ino, file_id, _ = header
    st = os.fstat(fd)
    now = read_file_id(fd)  # as it is, not as the rollback would leave it: HDF5 never writes the user block
    if now != file_id:
        return f"it was made for the cache file of id {file_id.hex()}, and {path} is {now.hex()}"
    if (st.st_dev, st.st_ino) != (dev, ino):
        return f"it was made for inode {ino}, and {path} is now inode {st.st_ino}"
    if st.st_size < base_size and not _covered(records, st.st_size, base_size):
        return f"it was made for a file of at least {base_size} bytes, and {path} has {st.st_size}"
    for offset, crc in samples:
        if zlib.crc32(_after_rollback(fd, offset, min(PAGE, base_size - offset), records)) != crc:
            return f"its page at byte {offset} is not that of {path}"
    return ""


def _after_rollback(fd: int, offset: int, n: int, records: list[tuple[int, bytes]]) -> bytes:
    """The n bytes at `offset` of the file open as `fd` as the rollback of `records` would leave them."""
    page = bytearray(os.pread(fd, n, offset).ljust(n, b"\0"))
    for at, old in records:
        lo, hi = max(at, offset), min(at + len(old), offset + n)
        if lo < hi:
            page[lo - offset: hi - offset] = old[lo - at: hi - at]
    return bytes(page)


def _covered(records: list[tuple[int, bytes]], lo: int, hi: int) -> bool:
    """Whether the saved pages cover every byte of [lo, hi)."""
    for offset, old in sorted(records):
        if offset > lo:
            return False
        lo = max(lo, offset + len(old))
        if lo >= hi:
            return True
    return lo >= hi


def set_aside(undo: Path, path: Path, reason: str) -> Path:
    """Move an undo journal that must not be applied to `path` out of the way, with one warning naming it."""
    dest, k = undo.with_name(undo.name + ".foreign"), 1
    while dest.exists():
        dest, k = undo.with_name(f"{undo.name}.foreign-{k}"), k + 1
    os.replace(undo, dest)
    fsync_dir(dest)
    warnings.warn(f"undo file {undo} does not belong to cache {path} ({reason}); moved it to {dest} and left the "
                  "cache as it is (delete it when you no longer need it)", BottleneckWarning, stacklevel=2)
    return dest


def lock_exclusive(fd: int, path: Path, timeout: float) -> None:
    """Exclusive flock on the cache file, waiting up to `timeout` seconds for its readers to close it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise CacheReadersError(f"cache {path} is held open by a reader (an h5py session or another "
                                        f"bottleneck command) for more than {timeout:g} s") from None
            time.sleep(0.05)


class CacheReadersError(CacheError):
    """A commit could not start because readers keep the cache open; the batches stay journaled."""
