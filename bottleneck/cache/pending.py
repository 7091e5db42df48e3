"""What a cache has journaled but not committed, and who holds it: the extract writing it now (its pid, from the
writer's lock) or nobody (an interrupted run, whose batches the next run of the same extract commits first).

Read-only: nothing here takes a lock a writer could trip over. Where the kernel lists its locks (/proc/locks,
Linux), the writer's lock is looked up there; elsewhere it is probed with a shared flock held for an instant.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np

from .journal import Journal, pending_batches

PROC_LOCKS = Path("/proc/locks")


def lock_path(path: Path) -> Path:
    """`<cache>.lock`, the one-writer lock of writer.WriterLock."""
    return path.with_name(path.name + ".lock")


def writer_pid(path: str | Path, proc_locks: Path = PROC_LOCKS) -> int | None:
    """The pid of the process writing cache `path` now (it holds `<cache>.lock` and wrote its pid there; 0 in the
    instant before it has), else None."""
    lock = lock_path(Path(path))
    try:
        ino = os.stat(lock).st_ino
        recorded = lock.read_text(errors="replace").strip()
    except OSError:  # no lock file: no writer ever ran here
        return None
    pid = int(recorded) if recorded.isdigit() else 0
    try:
        holders = exclusive_flocks(proc_locks.read_text())
    except OSError:  # no /proc/locks to read: probe
        return pid if probe(lock) else None
    # The inode and the pid the writer wrote both match (inode numbers repeat across file systems, and the device
    # numbers of an overlay mount differ from the kernel's).
    return pid if (ino, pid) in holders or (not pid and any(i == ino for i, _ in holders)) else None


def exclusive_flocks(proc_locks: str) -> set[tuple[int, int]]:
    """(inode, pid) of every exclusive flock held, from the text of /proc/locks. Its lines read
    `1: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF`; a waiter's has `->` after the number."""
    held = set()
    for line in proc_locks.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue  # POSIX locks, shared locks, and waiters (`->` shifts the fields)
        ino, pid = fields[5].rsplit(":", 1)[-1], fields[4]
        if ino.isdigit() and pid.isdigit():
            held.add((int(ino), int(pid)))
    return held


def probe(lock: Path) -> bool:
    """Whether an exclusive flock is held on `lock`: a shared one cannot be had while it is."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock: no writer can be told apart
        return False
    finally:
        os.close(fd)  # also releases the shared lock at once
    return False


def journaled_ids(path: str | Path) -> set[str]:
    """Image ids of the rows with features in the journaled batches of `path` (what the next commit adds from the
    journal); a batch that does not load counts for nothing (the commit sets it aside)."""
    ids: set[str] = set()
    for batch in pending_batches(Path(path)):
        try:
            arrays = Journal.read(batch)
            ids.update(str(i) for i in np.asarray(arrays["image_id"])[np.asarray(arrays["has_features"], bool)])
        except Exception:  # noqa: BLE001 -- damaged or removed meanwhile: the commit decides what becomes of it
            continue
    return ids
