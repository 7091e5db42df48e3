"""The hash pass of extraction: the SHA-256 of every image file, read on threads from the start of a run, so that
TensorFlow's import and the backbone's construction (seconds each) overlap it instead of following it.

    FileHashes(entries) -> threads hash the files in the background -> .result(): (sha256, "") or ("", reason) of
    each entry, in the entries' order

The hashes are read in full every run: the cache records no file size, mtime or inode that a rerun could trust
instead of the bytes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..images import Entry
from ..util import progress_bar, sha256_file

HASH_THREADS = 8  # hashing is I/O bound where files are not cached; threads overlap the reads


def file_sha256(path: Path) -> tuple[str, str]:
    """(sha256, "") or ("", reason) when the file cannot be read."""
    try:
        return sha256_file(path), ""
    except OSError as exc:
        return "", f"cannot read file: {exc.strerror or exc}"


class FileHashes:
    """The hashes of `entries`' files, computed by a pool of threads from the moment it is entered.

    Use as a context manager: leaving it (also on an error or Ctrl-C) cancels the files not started yet."""

    def __init__(self, entries: list[Entry], progress: bool = True, threads: int = HASH_THREADS):
        self.entries, self.progress, self.threads = entries, progress, threads
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list = []

    def __enter__(self) -> FileHashes:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bottleneck-hash")
        self._futures = [self._pool.submit(file_sha256, e.path) for e in self.entries]  # in order, each once
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def result(self) -> list[tuple[str, str]]:
        """Each entry's (sha256, "") or ("", reason), in order; waits for the files still being hashed (with a
        progress bar of them)."""
        bar = progress_bar(total=len(self._futures), desc="hashing", unit="img", enabled=self.progress, leave=False)
        out = []
        for future in self._futures:
            out.append(future.result())
            bar.update(1)
        bar.close()
        return out
