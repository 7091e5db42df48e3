"""Opening a cache for reading (`open_cache`): the lock shared with commits, and the rollback of a commit whose
writer was killed. Below `store` and `virtual`, which both open caches (a virtual cache's sources too)."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import h5py

from ..errors import CacheError
from .undo import rollback, undo_path

SCHEMA_VERSION = 1


@contextmanager
def open_cache(path: str | Path):
    """The cache as an h5py.File for reading, between commits: waits while a commit runs (it holds the file's
    lock exclusively) and first rolls back a commit whose extraction was killed midway (see undo.py).

    Only rows below the `n_rows` attribute are committed; a dataset may be longer."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CacheError(f"cannot open cache {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a file system without flock (some network mounts): read without waiting for commits
            pass
        if undo_path(path).exists():  # no commit is running (we hold the lock shared): its writer was killed
            fcntl.flock(fd, fcntl.LOCK_UN)
            _recover(path)
            fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise CacheError(f"cannot open cache {path}: {exc}; is it an HDF5 file written by bottleneck?") from None
        with f:
            yield f
    finally:
        os.close(fd)


def _recover(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise CacheError(f"cache {path} has an unfinished commit from a killed extraction and this user cannot "
                         f"roll it back ({exc.strerror}); rerun the extract command as its owner") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rollback(path, fd)
    finally:
        os.close(fd)
