"""The journal thread of extraction (`forward.JournalThread`) on a real cache writer: batches journaled in the order
they were put, a writer's error raised in the caller's thread with what was journaled kept, and Ctrl-C in the loop
still journaling every batch already put."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import feature_cache

import bottleneck.cache.writer as cache_write
from bottleneck.cache.journal import pending_batches
from bottleneck.cache.store import load_cache
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import CacheError
from bottleneck.extract.forward import JournalThread

DIM = 8


def batch(b: int, n: int = 3):
    """Batch `b`: n new rows whose features are all b."""
    rows = [dict(image_id=f"new{b:03d}-{k}", path=f"mel/new{b:03d}-{k}.jpg", label="mel", group="",
                 sha256=f"{b * 100 + k + 10**6:064x}", width=1, height=1) for k in range(n)]
    return rows, np.full((n, DIM), b, np.float32)


@pytest.fixture
def cache(tmp_path):
    return feature_cache(tmp_path / "c.h5", counts={"mel": 4}, dim=DIM)


def test_batches_are_journaled_in_order_by_one_other_thread(cache):
    config = load_cache(cache).config
    writers = set()
    with CacheWriter(cache, config, commit_seconds=0) as w:  # every batch commits: the thread lags behind the puts
        write_batch = w.write_batch

        def recording(*args, **kwargs):
            writers.add(threading.current_thread().name)
            return write_batch(*args, **kwargs)

        w.write_batch = recording
        with JournalThread(w, depth=2) as journal:
            for b in range(12):
                journal.put(*batch(b))
    c = load_cache(cache)
    assert list(c.image_ids[4:]) == [f"new{b:03d}-{k}" for b in range(12) for k in range(3)]
    np.testing.assert_array_equal(c.features[4:, 0], np.repeat(np.arange(12), 3))
    assert writers == {"bottleneck-journal"}


def test_a_writer_error_is_raised_here_and_what_was_journaled_is_kept(cache, monkeypatch):
    config = load_cache(cache).config
    with pytest.raises(CacheError, match="free space and rerun") as err:
        with CacheWriter(cache, config, commit_seconds=0) as w:
            monkeypatch.setattr(cache_write, "free_bytes", lambda folder: 4096)  # no commit fits any more
            with JournalThread(w) as journal:
                for b in range(6):
                    journal.put(*batch(b))
    assert "\n" not in str(err.value)
    # the first batch was journaled and its commit refused; the writer got no batch after the error
    assert len(load_cache(cache).image_ids) == 4 and len(pending_batches(cache)) == 1
    monkeypatch.undo()
    with CacheWriter(cache, config):  # the next writer commits what the failed one journaled
        pass
    c = load_cache(cache)
    assert list(c.image_ids[4:]) == [f"new000-{k}" for k in range(3)] and not pending_batches(cache)


def test_ctrl_c_in_the_loop_journals_every_batch_already_put(cache):
    config = load_cache(cache).config
    with pytest.raises(KeyboardInterrupt):
        with CacheWriter(cache, config, commit_seconds=3600) as w:
            with JournalThread(w, depth=4) as journal:
                for b in range(4):
                    journal.put(*batch(b))
                raise KeyboardInterrupt
    c = load_cache(cache)  # the writer's last commit took them all, in order
    assert list(c.image_ids[4:]) == [f"new{b:03d}-{k}" for b in range(4) for k in range(3)]
