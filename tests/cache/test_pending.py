"""What a cache holds uncommitted and who holds it (cache/pending.py): the pid of the extract writing it now, read
from the kernel's list of locks or probed where there is none, the image ids its journal holds, and what `info`
says of journaled batches: a running extract's, or an interrupted run's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from bottleneck.cache.pending import PROC_LOCKS, exclusive_flocks, journaled_ids, lock_path, writer_pid
from bottleneck.cache.store import CacheConfig, describe_cache
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import CacheError

CONFIG = CacheConfig(backbone="vgg16", weights="none", weights_sha256="", seed=0, input_size=32, pooling="avg",
                     preprocessing="caffe", dtype="float16", num_features=4)
NO_PROC_LOCKS = "/nonexistent/proc/locks"  # a system without /proc/locks: the lock is probed instead


def rows_of(ids, has_features=True):
    return [dict(image_id=i, path=f"x/{i}.jpg", label="mel", group="", sha256=f"{k:064x}", width=40, height=30,
                 has_features=has_features) for k, i in enumerate(ids)]


@pytest.mark.parametrize("proc_locks", [PROC_LOCKS, NO_PROC_LOCKS])
def test_writer_pid_names_the_live_writer_only(tmp_path, proc_locks):
    if proc_locks == PROC_LOCKS and not PROC_LOCKS.is_file():
        pytest.skip("no /proc/locks on this system")
    path = tmp_path / "c.h5"
    locks = Path(proc_locks)
    assert writer_pid(path, locks) is None  # no writer ever ran: no lock file
    with CacheWriter(path, CONFIG, {"dataset": "t"}, ("mel",), commit_seconds=3600) as writer:
        writer.write_batch(rows_of(["a", "b"]), np.ones((2, 4)))
        assert writer_pid(path, locks) == os.getpid()
    assert lock_path(path).is_file() and lock_path(path).read_text() == str(os.getpid())  # the pid stays behind...
    assert writer_pid(path, locks) is None  # ... but nobody holds the lock any more


def test_exclusive_flocks_reads_the_kernels_lines():
    text = ("1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF\n"
            "1: -> FLOCK  ADVISORY  WRITE 4343 fe:00:1234 0 EOF\n"  # a waiter, not a holder
            "2: FLOCK  ADVISORY  READ 77 fe:00:99 0 EOF\n"  # a reader's shared lock
            "3: POSIX  ADVISORY  WRITE 88 00:2e:55 0 EOF\n")
    assert exclusive_flocks(text) == {(1234, 4242)}


def test_info_tells_a_running_extracts_batches_from_an_interrupted_runs(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, CONFIG, {"dataset": "t"}, ("mel",), commit_seconds=3600) as writer:
        writer.write_batch(rows_of(["a", "b"]), np.ones((2, 4)))  # a first batch is committed at once
        writer.write_batch(rows_of(["c", "d", "e"]), np.ones((3, 4)))  # journaled until the next commit
        assert journaled_ids(path) == {"c", "d", "e"}
        r = run_cli("info", path)
        assert r.exit_code == 0, r.output
        assert (f"pending: 1 batches journaled by a running extract (pid {os.getpid()}), not yet committed"
                in r.output.splitlines())
        assert "interrupted" not in r.output
    assert describe_cache(path)["rows"] == 5 and not journaled_ids(path)

    CacheWriter(path, CONFIG).write_batch(rows_of(["f", "g"]), np.ones((2, 4)))  # a writer that died: journal only
    CacheWriter(path, CONFIG).write_batch(rows_of(["a"], has_features=False), None)  # a label change: no vector
    assert journaled_ids(path) == {"f", "g"}
    d = describe_cache(path)
    assert (d["pending_batches"], d["writer_pid"]) == (2, None)
    r = run_cli("info", path)
    assert "pending: 2 journaled batches from an interrupted run; rerun extract to complete the cache" in r.output


def test_info_on_a_first_extraction_not_yet_committed_names_the_running_writer(tmp_path):
    path = tmp_path / "c.h5"
    writer = CacheWriter(path, CONFIG, {"dataset": "t"}, ("mel",))
    writer.write_batch(rows_of(["a"]), np.ones((1, 4)))  # journaled, never committed: no cache file yet
    with pytest.raises(CacheError, match="only journaled batches from an interrupted first run"):
        describe_cache(path)
    writer.lock.acquire()  # the same writer, alive (as in the instant before its first commit)
    try:
        with pytest.raises(CacheError, match=rf"being created by a running extract \(pid {os.getpid()}\)"):
            describe_cache(path)
    finally:
        writer.lock.release()
    assert not path.exists()
